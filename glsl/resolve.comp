#version 430 core
// Compute raster, pass 2: one invocation per 4 pixels turns the winning point of each pixel into its
// label (point modes) or its mask bit times the label (patch modes), packed 4 labels per uint.
layout(local_size_x = 256) in;

layout(std430, binding = 0) readonly buffer Points { uint pts[]; };
layout(std430, binding = 1) readonly buffer Winner { uint winner[]; };
layout(std430, binding = 2) writeonly buffer Labels { uint labels[]; };

uniform uint width;
uniform uint height;
uniform uint patch_mode;

#include "common.glsl"

uniform uint mask_k0;
uniform uint mask_k1;

uint mask_of(uint i) {
    return python_masks == 1u ? masks[i] : counter_mask(i, mask_k0, mask_k1);
}

uint pixel(uint p) {
    if (p >= width * height) return 0u;
    uint w = winner[p];
    if (w == 0u) return 0u;
    uint i = w - 1u;
    if (patch_mode == 0u) return label_of(i);
    uint q = pts[i];
    uint c = p % width - ((q & 0xffffu) + 1u);
    uint r = p / width - ((q >> 16) + 1u);
    uint bit = (mask_of(i) >> (8u - (3u * r + c))) & 1u;
    return bit * label_of(i);
}

void main() {
    uint g = gl_GlobalInvocationID.x;
    uint p = g * 4u;
    if (p >= width * height) return;
    labels[g] = pixel(p) | (pixel(p + 1u) << 8) | (pixel(p + 2u) << 16) | (pixel(p + 3u) << 24);
}
