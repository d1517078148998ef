#version 430 core
// CPU twin: render::cpu::raster. Compared by: tests/gl.rs
// gl_equals_cpu_for_every_mode_and_odd_sizes, gl_shards_equal_cpu_shards.
// Compute raster, pass 1 (CPU twin: render::cpu::raster): every pixel keeps the largest index (+1) of
// the points that cover it, which is the original's "last point wins" without any ordering between
// invocations. Up to 8 clouds per dispatch (gl_WorkGroupID.y), each with its own winner canvas.
layout(local_size_x = 256) in;

layout(std430, binding = 0) readonly buffer Points { uint pts[]; }; // x | y << 16
layout(std430, binding = 1) buffer Winner { uint winner[]; };

uniform uint width;
uniform uint height;
uniform uint patch_mode;
// Per cloud of the group: its first point in Points and its point count (keep in sync: MAX_GROUP).
uniform uvec2 clouds[8];

void main() {
    uint z = gl_WorkGroupID.y;
    uint i = gl_GlobalInvocationID.x;
    if (i >= clouds[z].y) return;
    uint p = pts[clouds[z].x + i];
    uint x = p & 0xffffu;
    uint y = p >> 16;
    uint base = z * width * height;
    if (patch_mode == 1u) {
        for (uint r = 1u; r <= 3u; r++) {
            for (uint c = 1u; c <= 3u; c++) {
                uint xx = x + c, yy = y + r;
                if (xx < width && yy < height) atomicMax(winner[base + yy * width + xx], i + 1u);
            }
        }
    } else if (x < width && y < height) {
        atomicMax(winner[base + y * width + x], i + 1u);
    }
}
