#version 430 core
// CPU twin: the end of mvfdb::model. Compared by: tests/mvfdb_gl.rs
// device_models_equal_the_cpu_models_bit_for_bit.
// MV-FractalDB's normalisation of glsl/mvfdb_chaos.comp's points (CPU twin: the end of mvfdb::model,
// keep in sync), one workgroup per model:
//   1. min and max over all 3 x n coordinates together (numpy's: any NaN makes both NaN);
//   2. v = (v - min) / (max - min) * 2 - 1 per value, the division correctly rounded, no FMA;
//   3. the "centroid" per axis: the values summed left to right (one invocation per axis), divided
//      by 10,000 (the requested count, not n), subtracted;
//   4. the points as f32 (x, y, z) for the vertex shader, and per model whether y holds a NaN (the
//      original skips that model).
layout(local_size_x = 256) in;

#include "fp64.glsl"

layout(std430, binding = 4) buffer Xyz { double xyz[]; };
layout(std430, binding = 5) writeonly buffer Pts { float pts[]; };
layout(std430, binding = 6) writeonly buffer Info { uint info[]; };

uniform uint n_points;    // kept points per model (9,999)
uniform uint divisor;     // the centroid's 10,000 (exact as a double)

const uint T = 256u;
shared double s_lo[T];
shared double s_hi[T];
shared uint s_nan;
shared uint s_y_nan;
shared double s_c[3];

void main() {
    uint m = gl_WorkGroupID.x;
    uint t = gl_LocalInvocationID.x;
    uint n = n_points;
    uint base = m * 3u * n;
    if (t == 0u) {
        s_nan = 0u;
        s_y_nan = 0u;
    }
    barrier();
    // 1. Min and max over this invocation's share of the 3n values.
    uint per = (3u * n + T - 1u) / T;
    uint lo_i = min(t * per, 3u * n), hi_i = min(lo_i + per, 3u * n);
    double lo = f64_inf(), hi = -f64_inf();
    bool any_nan = false;
    for (uint i = lo_i; i < hi_i; i++) {
        double v = xyz[base + i];
        any_nan = any_nan || isnan(v);
        lo = min(lo, v);
        hi = max(hi, v);
    }
    if (any_nan) atomicOr(s_nan, 1u);
    s_lo[t] = lo;
    s_hi[t] = hi;
    for (uint off = T / 2u; off > 0u; off >>= 1u) {
        barrier();
        if (t < off) {
            s_lo[t] = min(s_lo[t], s_lo[t + off]);
            s_hi[t] = max(s_hi[t], s_hi[t + off]);
        }
    }
    barrier();
    bool nan_all = s_nan != 0u;
    double mn = s_lo[0], mx = s_hi[0];
    // 2. The min-max to [-1, 1] in place (NaN everywhere when a NaN was seen: numpy's min is NaN).
    precise double range = mx - mn;
    for (uint i = lo_i; i < hi_i; i++) {
        precise double v = xyz[base + i] - mn;
        precise double q = div_ieee(v, range);
        precise double r = q * 2.0 - 1.0;
        xyz[base + i] = nan_all ? f64_nan() : r;
    }
    memoryBarrierBuffer();
    barrier();
    // 3. The sums, left to right, one axis per invocation.
    if (t < 3u) {
        precise double s = 0.0;
        for (uint i = 0u; i < n; i++) s = s + xyz[base + t * n + i];
        s_c[t] = div_ieee(s, double(divisor));
    }
    barrier();
    // 4. The f32 points, point-major, and y's NaN.
    uint pp = (n + T - 1u) / T;
    uint a = min(t * pp, n), b = min(a + pp, n);
    bool y_nan = false;
    for (uint i = a; i < b; i++) {
        precise double x = xyz[base + i] - s_c[0];
        precise double y = xyz[base + n + i] - s_c[1];
        precise double z = xyz[base + 2u * n + i] - s_c[2];
        y_nan = y_nan || isnan(y);
        uint o = (m * n + i) * 3u;
        pts[o + 0u] = float(x);
        pts[o + 1u] = float(y);
        pts[o + 2u] = float(z);
    }
    if (y_nan) atomicOr(s_y_nan, 1u);
    barrier();
    if (t == 0u) info[m] = s_y_nan;
}
