#version 430 core
// CPU twin: render::cpu::raster_points. Compared by: tests/gl.rs
// gl_equals_cpu_for_every_mode_and_odd_sizes, gl_reproduces_every_golden_file.
// GL_POINTS raster: point i of instance k (gl_InstanceID) lands in the k-th region of an atlas, at the
// pixel of its patch centre (x+2, y+2) with size 3 (patch modes) or at (x, y) with size 1 (point modes).
// Framebuffer row y is canvas row y, so the readback needs no flip.
layout(std430, binding = 0) readonly buffer Points { uint pts[]; };

uniform uint patch_mode;
uniform uint pt_base; // the cloud's first point in Points
uniform uint region_w;
uniform uint atlas_w;
uniform uint atlas_h;
uniform float point_size;

flat out uint v_i;
flat out uint v_x;
flat out uint v_y;
flat out uint v_k;

void main() {
    uint i = uint(gl_VertexID);
    uint k = uint(gl_InstanceID);
    uint p = pts[pt_base + i];
    uint x = p & 0xffffu;
    uint y = p >> 16;
    uint off = patch_mode == 1u ? 2u : 0u;
    float cx = float(k * region_w + x + off) + 0.5;
    float cy = float(y + off) + 0.5;
    gl_Position = vec4(2.0 * cx / float(atlas_w) - 1.0, 2.0 * cy / float(atlas_h) - 1.0, 0.0, 1.0);
    gl_PointSize = point_size;
    v_i = i;
    v_x = x;
    v_y = y;
    v_k = k;
}
