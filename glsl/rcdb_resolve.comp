#version 430 core
// CPU twin: rcdb::draw_instance's grays (the CPU raster). Compared by: tests/rcdb.rs
// gl_engine_equals_the_goldens_and_the_cpu_engine.
// RCDB raster, pass 2: one invocation per 4 pixels of one canvas (gl_WorkGroupID.y) turns the winning
// segment of each pixel into its line's gray (255, the white background, where none won), packed 4
// pixels per uint; canvas j fills words [j*words, (j+1)*words).
layout(local_size_x = 256) in;

layout(std430, binding = 1) readonly buffer Winner { uint winner[]; };
layout(std430, binding = 2) readonly buffer Grays { uint grays[]; }; // per segment
layout(std430, binding = 3) writeonly buffer Pixels { uint pixels[]; };

uniform uint size;
uniform uint words;
uniform uvec2 canvases[64];

uint gray(uint z, uint p) {
    if (p >= size * size) return 255u;
    uint w = winner[z * size * size + p];
    return w == 0u ? 255u : grays[canvases[z].x + w - 1u];
}

void main() {
    uint g = gl_GlobalInvocationID.x;
    uint z = gl_WorkGroupID.y;
    if (g >= words) return;
    uint p = g * 4u;
    pixels[z * words + g] = gray(z, p) | (gray(z, p + 1u) << 8) | (gray(z, p + 2u) << 16) | (gray(z, p + 3u) << 24);
}
