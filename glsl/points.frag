#version 430 core
// CPU twin: render::cpu::raster_points. Compared by: tests/gl.rs
// gl_equals_cpu_for_every_mode_and_odd_sizes, gl_reproduces_every_golden_file.
// Each fragment of a point writes its label, or (patch modes) the point's mask bit for that pixel times
// the label. Blending is off, so later points overwrite earlier ones, zero bits included: GL keeps
// primitive order, which is the original's "last point wins".
flat in uint v_i;
flat in uint v_x;
flat in uint v_y;
flat in uint v_k;

uniform uint patch_mode;
uniform uint region_w;
uniform uint n_points;
uniform uvec2 mask_keys[64];

#include "common.glsl"

layout(location = 0) out uint o_label;

void main() {
    if (patch_mode == 0u) {
        o_label = label_of(v_i);
        return;
    }
    uint px = uint(gl_FragCoord.x) - v_k * region_w;
    uint py = uint(gl_FragCoord.y);
    uint c = px - (v_x + 1u);
    uint r = py - (v_y + 1u);
    uint m = python_masks == 1u ? masks[v_k * n_points + v_i] : counter_mask(v_i, mask_keys[v_k].x, mask_keys[v_k].y);
    o_label = ((m >> (8u - (3u * r + c))) & 1u) * label_of(v_i);
}
