#version 430 core
// CPU twin: ifs::Ifs::chaos_game (and the lanes of ifs::chaos_lanes). Compared by: tests/gl.rs
// gl_equals_cpu_for_every_mode_and_odd_sizes,
// gl_search_equals_cpu_search_and_the_published_classes.
// The original's chaos game, one invocation per cloud, in fp64 with `precise` (no FMA contraction),
// so that the points are bit-identical to the CPU engine. Steps [k_begin, k_end) of every cloud; the
// state (x, y, next_x, next_y) is carried between dispatches (llvmpipe stops an invocation after 65,535
// loop iterations, so long chains are split into several dispatches).
layout(local_size_x = 32) in;

layout(std430, binding = 0) readonly buffer U { double u[]; };
// Per cloud, MAX_MAPS maps of 8 doubles: a, b, c, d, e, f, cumulative p, unused.
layout(std430, binding = 1) readonly buffer Maps { double maps[]; };
layout(std430, binding = 2) readonly buffer NMaps { uint nmaps[]; };
layout(std430, binding = 3) buffer State { double state[]; };
layout(std430, binding = 4) writeonly buffer Xs { double xs[]; };
layout(std430, binding = 5) writeonly buffer Ys { double ys[]; };

uniform uint n_clouds;
uniform uint n_points;
uniform uint max_maps;
uniform uint k_begin;
uniform uint k_end;
uniform uint u_stride; // 0: one sequence shared by every cloud (render); n: one per cloud (search)

void main() {
    uint c = gl_GlobalInvocationID.x;
    if (c >= n_clouds) return;
    precise double x = state[c * 4u + 0u];
    precise double y = state[c * 4u + 1u];
    precise double nx = state[c * 4u + 2u];
    precise double ny = state[c * 4u + 3u];
    uint base = c * max_maps * 8u;
    uint nm = nmaps[c];
    uint out_base = c * n_points;
    if (k_begin == 0u) {
        xs[out_base] = x;
        ys[out_base] = y;
    }
    for (uint k = k_begin; k < k_end; k++) {
        double uk = u[c * u_stride + k];
        for (uint m = 0u; m < nm; m++) {
            uint o = base + m * 8u;
            if (uk <= maps[o + 6u]) {
                nx = x * maps[o + 0u] + y * maps[o + 1u] + maps[o + 4u];
                ny = x * maps[o + 2u] + y * maps[o + 3u] + maps[o + 5u];
                break;
            }
        }
        xs[out_base + k + 1u] = nx;
        ys[out_base + k + 1u] = ny;
        x = nx;
        y = ny;
    }
    state[c * 4u + 0u] = x;
    state[c * 4u + 1u] = y;
    state[c * 4u + 2u] = nx;
    state[c * 4u + 3u] = ny;
}
