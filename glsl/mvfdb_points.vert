#version 430 core
// CPU twin: mvfdb::view::draw_points. Compared by: tests/mvfdb.rs
// gl_engine_equals_the_goldens_and_the_cpu_engine,
// cpu_engine_equals_the_gl_engine_beyond_the_goldens, point_sizes_agree_on_both_engines.
// MV-FractalDB views (CPU twin: mvfdb::view::draw_points): the original's vertex shader, every point
// of a model as a GL point of size 1 through proj * view * model, many views per draw: instance k
// draws view views[view_base + k] into layer k of the framebuffer (each layer a whole viewport, so
// the window coordinates are those of a draw per view).
#extension GL_ARB_shader_viewport_layer_array : enable
#extension GL_AMD_vertex_shader_layer : enable
#if !defined(GL_ARB_shader_viewport_layer_array) && !defined(GL_AMD_vertex_shader_layer)
#error "gl_Layer in a vertex shader needs GL_ARB_shader_viewport_layer_array or GL_AMD_vertex_shader_layer"
#endif
// x, y, z per point (f32, glsl/mvfdb_normalize.comp's output); a draw's `first` picks the model.
layout(std430, binding = 5) readonly buffer Pts { float p[]; };
layout(std430, binding = 7) readonly buffer Views { mat4 views[]; };

uniform mat4 proj;
uniform mat4 model;
uniform uint view_base;

void main() {
    uint i = uint(gl_VertexID) * 3u;
    mat4 view = views[view_base + uint(gl_InstanceID)];
    gl_Position = proj * view * model * vec4(p[i], p[i + 1u], p[i + 2u], 1.0);
    gl_Layer = gl_InstanceID;
}
