#version 430 core
// CPU twin: rcdb::line::draw_line. Compared by: tests/rcdb.rs
// gl_engine_equals_the_goldens_and_the_cpu_engine.
// RCDB raster, pass 1 (CPU twin: rcdb::line::draw_line): one invocation per segment walks Pillow's
// width-1 line (Bresenham from the truncated start, end pixel excluded, then the end pixel) and every
// pixel it covers keeps the largest segment index (+1) of its canvas: Pillow's "later segments
// overwrite earlier ones" without any ordering between invocations. Up to 64 canvases per dispatch
// (gl_WorkGroupID.y).
layout(local_size_x = 64) in;

layout(std430, binding = 0) readonly buffer Segments { ivec4 segs[]; }; // x0, y0, x1, y1 (pixels)
layout(std430, binding = 1) buffer Winner { uint winner[]; };

uniform uint size;
// Per canvas of the dispatch: its first segment and its segment count (keep in sync:
// rcdb::gl::MAX_CANVASES).
uniform uvec2 canvases[64];

void put(uint base, int x, int y, uint key) {
    if (uint(x) < size && uint(y) < size) atomicMax(winner[base + uint(y) * size + uint(x)], key);
}

void main() {
    uint z = gl_WorkGroupID.y;
    uint i = gl_GlobalInvocationID.x;
    if (i >= canvases[z].y) return;
    ivec4 s = segs[canvases[z].x + i];
    uint key = i + 1u;
    uint base = z * size * size;
    int x = s.x, y = s.y;
    int dx = s.z - s.x, dy = s.w - s.y;
    int xs = dx < 0 ? -1 : 1, ys = dy < 0 ? -1 : 1;
    dx = abs(dx);
    dy = abs(dy);
    if (dx == 0) {
        for (int k = 0; k < dy; k++) { put(base, x, y, key); y += ys; }
    } else if (dy == 0) {
        for (int k = 0; k < dx; k++) { put(base, x, y, key); x += xs; }
    } else if (dx > dy) {
        int e = 2 * dy - dx;
        for (int k = 0; k < dx; k++) {
            put(base, x, y, key);
            if (e >= 0) { y += ys; e -= 2 * dx; }
            e += 2 * dy;
            x += xs;
        }
    } else {
        int e = 2 * dx - dy;
        for (int k = 0; k < dy; k++) {
            put(base, x, y, key);
            if (e >= 0) { x += xs; e -= 2 * dy; }
            e += 2 * dx;
            y += ys;
        }
    }
    put(base, s.z, s.w, key);
}
