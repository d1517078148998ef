// CPU twin: rng::hash32 and rng::MaskKey (the mask hash), render::convert_color (labels). Compared
// by: tests/gl.rs gl_equals_cpu_for_every_mode_and_odd_sizes.
// Shared by the raster shaders: the counter-based mask hash of the CPU engine (rng.rs), and labels.
uint hash32(uint x) {
    x ^= x >> 16;
    x *= 0x7feb352du;
    x ^= x >> 15;
    x *= 0x846ca68bu;
    return x ^ (x >> 16);
}

// 1 + floor(h * 511 / 2^32): the 9-bit mask (1..511) of point i for the instance key (k0, k1).
uint counter_mask(uint i, uint k0, uint k1) {
    uint h = hash32(hash32(i + k0) ^ k1);
    uint hi, lo;
    umulExtended(h, 511u, hi, lo);
    return 1u + hi;
}

uniform uint python_masks; // 1: masks[] holds CPython randrange(1, 512) draws (instance-major)
uniform uint color_mode;   // 1: label = 1 + i % 128, else 127

layout(std430, binding = 3) readonly buffer Masks { uint masks[]; };

uint label_of(uint i) {
    return color_mode == 1u ? 1u + (i % 128u) : 127u;
}
