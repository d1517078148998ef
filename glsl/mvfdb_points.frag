#version 430 core
// CPU twin: mvfdb::view::draw_points (the value it writes). Compared by: tests/mvfdb.rs
// gl_engine_equals_the_goldens_and_the_cpu_engine,
// cpu_engine_equals_the_gl_engine_beyond_the_goldens.
// Every point is white (the canvas byte 255).
out uint color;

void main() {
    color = 255u;
}
