#version 430 core
// Zeroes the first `count` words of the winner canvases before a splat (GL 4.3 has no
// glClearBufferSubData in glow).
layout(local_size_x = 256) in;
layout(std430, binding = 1) writeonly buffer Winner { uint winner[]; };
uniform uint count;
void main() {
    uint i = gl_GlobalInvocationID.x;
    if (i < count) winner[i] = 0u;
}
