#version 430 core
// MV-FractalDB views (CPU twin: mvfdb::view::draw_points): the original's vertex shader, every
// point of a model as a GL point of size 1 through proj * view * model.
layout(std430, binding = 0) readonly buffer Points { float p[]; }; // x, y, z per point (f32)

uniform mat4 proj;
uniform mat4 view;
uniform mat4 model;

void main() {
    uint i = uint(gl_VertexID) * 3u;
    gl_Position = proj * view * model * vec4(p[i], p[i + 1u], p[i + 2u], 1.0);
}
