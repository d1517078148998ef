#version 430 core
// CPU twin: none (it zeroes the winner buffer; the CPU engine starts from a fresh canvas). Compared
// by: tests/gl.rs gl_equals_cpu_for_every_mode_and_odd_sizes, tests/rcdb.rs
// gl_engine_equals_the_goldens_and_the_cpu_engine.
// Zeroes the first `count` words of the winner canvases before a splat (GL 4.3 has no
// glClearBufferSubData in glow).
layout(local_size_x = 256) in;
layout(std430, binding = 1) writeonly buffer Winner { uint winner[]; };
uniform uint count;
void main() {
    uint i = gl_GlobalInvocationID.x;
    if (i < count) winner[i] = 0u;
}
