#version 430 core
// Compute raster, pass 1: every pixel keeps the largest index (+1) of the points that cover it,
// which is the original's "last point wins" without any ordering between invocations.
layout(local_size_x = 256) in;

layout(std430, binding = 0) readonly buffer Points { uint pts[]; }; // x | y << 16
layout(std430, binding = 1) buffer Winner { uint winner[]; };

uniform uint n_points;
uniform uint width;
uniform uint height;
uniform uint patch_mode;

void main() {
    uint i = gl_GlobalInvocationID.x;
    if (i >= n_points) return;
    uint p = pts[i];
    uint x = p & 0xffffu;
    uint y = p >> 16;
    if (patch_mode == 1u) {
        for (uint r = 1u; r <= 3u; r++) {
            for (uint c = 1u; c <= 3u; c++) {
                uint xx = x + c, yy = y + r;
                if (xx < width && yy < height) atomicMax(winner[yy * width + xx], i + 1u);
            }
        }
    } else if (x < width && y < height) {
        atomicMax(winner[y * width + x], i + 1u);
    }
}
