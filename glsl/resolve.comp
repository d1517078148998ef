#version 430 core
// CPU twin: render::cpu::raster (the patch cover's resolve). Compared by: tests/gl.rs
// gl_equals_cpu_for_every_mode_and_odd_sizes, gl_shards_equal_cpu_shards.
// Compute raster, pass 2: one invocation per 4 pixels of one canvas (gl_WorkGroupID.y) turns the
// winning point of each pixel into its label (point modes) or its mask bit times the label (patch
// modes), packed 4 labels per uint; canvas j of the group fills words [j*words, (j+1)*words).
layout(local_size_x = 256) in;

layout(std430, binding = 0) readonly buffer Points { uint pts[]; };
layout(std430, binding = 1) readonly buffer Winner { uint winner[]; };
layout(std430, binding = 2) writeonly buffer Labels { uint labels[]; };

uniform uint width;
uniform uint height;
uniform uint patch_mode;
uniform uint words;
uniform uvec2 clouds[8];
// Per canvas of the group (keep in sync: MAX_GROUP_CANVASES): cloud in the group, the counter
// mask key (k0, k1), and the first of its CPython masks in Masks.
uniform uvec4 canvases[64];

#include "common.glsl"

uint pixel(uint p, uvec4 cv) {
    if (p >= width * height) return 0u;
    uint z = cv.x;
    uint w = winner[z * width * height + p];
    if (w == 0u) return 0u;
    uint i = w - 1u;
    if (patch_mode == 0u) return label_of(i);
    uint q = pts[clouds[z].x + i];
    uint c = p % width - ((q & 0xffffu) + 1u);
    uint r = p / width - ((q >> 16) + 1u);
    uint m = python_masks == 1u ? masks[cv.w + i] : counter_mask(i, cv.y, cv.z);
    uint bit = (m >> (8u - (3u * r + c))) & 1u;
    return bit * label_of(i);
}

void main() {
    uint g = gl_GlobalInvocationID.x;
    uint j = gl_WorkGroupID.y;
    if (g >= words) return;
    uvec4 cv = canvases[j];
    uint p = g * 4u;
    labels[j * words + g] = pixel(p, cv) | (pixel(p + 1u, cv) << 8) | (pixel(p + 2u, cv) << 16) | (pixel(p + 3u, cv) << 24);
}
