#version 430 core
// Every point is white (the canvas byte 255).
out uint color;

void main() {
    color = 255u;
}
