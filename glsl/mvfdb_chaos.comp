#version 430 core
// CPU twin: mvfdb::model. Compared by: tests/mvfdb_gl.rs
// device_models_equal_the_cpu_models_bit_for_bit.
// MV-FractalDB's 3D chaos game (CPU twin: mvfdb::model, keep in sync), one invocation per model, in
// fp64 with `precise` (no FMA contraction), so the points are bit-identical to the CPU engine's:
// point i is step i from the origin on u_i (each model its own 10,000 draws, the last unused); the
// map is the first whose running weight sum reaches u_i (none: the point repeats), and
// x' = x*a + y*b + z*c + j (y', z' likewise), evaluated left to right. Steps [k_begin, k_end) per
// dispatch, the state (x, y, z) carried between dispatches (llvmpipe stops an invocation after 65,535
// loop iterations).
layout(local_size_x = 32) in;

layout(std430, binding = 0) readonly buffer U { double u[]; };
// Per model, max_maps maps of 16 doubles: a..l (12), the running weight sum, 3 unused.
layout(std430, binding = 1) readonly buffer Maps { double maps[]; };
layout(std430, binding = 2) readonly buffer NMaps { uint nmaps[]; };
layout(std430, binding = 3) buffer State { double state[]; };
// Per model: x[0..n), y[0..n), z[0..n).
layout(std430, binding = 4) writeonly buffer Xyz { double xyz[]; };

uniform uint n_models;
uniform uint n_points; // kept points (9,999)
uniform uint u_stride; // draws per model (10,000)
uniform uint max_maps;
uniform uint k_begin;
uniform uint k_end;

void main() {
    uint c = gl_GlobalInvocationID.x;
    if (c >= n_models) return;
    precise double x = state[c * 4u + 0u];
    precise double y = state[c * 4u + 1u];
    precise double z = state[c * 4u + 2u];
    uint base = c * max_maps * 16u;
    uint nm = nmaps[c];
    uint o3 = c * 3u * n_points;
    for (uint k = k_begin; k < k_end; k++) {
        double uk = u[c * u_stride + k];
        for (uint m = 0u; m < nm; m++) {
            uint o = base + m * 16u;
            if (uk <= maps[o + 12u]) {
                precise double nx = x * maps[o + 0u] + y * maps[o + 1u] + z * maps[o + 2u] + maps[o + 9u];
                precise double ny = x * maps[o + 3u] + y * maps[o + 4u] + z * maps[o + 5u] + maps[o + 10u];
                precise double nz = x * maps[o + 6u] + y * maps[o + 7u] + z * maps[o + 8u] + maps[o + 11u];
                x = nx;
                y = ny;
                z = nz;
                break;
            }
        }
        xyz[o3 + k] = x;
        xyz[o3 + n_points + k] = y;
        xyz[o3 + 2u * n_points + k] = z;
    }
    state[c * 4u + 0u] = x;
    state[c * 4u + 1u] = y;
    state[c * 4u + 2u] = z;
}
