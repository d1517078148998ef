#version 430 core
// CPU twin: ifs::rescale. Compared by: tests/gl_rescale.rs
// gpu_rescale_equals_the_cpu_rescale_point_for_point.
// The rescale of glsl/chaos.comp's points, on the GPU; the CPU twin is ifs::rescale (keep in sync).
// One workgroup per cloud, each invocation owning a contiguous chunk of the points:
//   1. NaN truncation: x's first NaN at k removes points k-100..k-1 (numpy's negative indices wrap to
//      the end) and every NaN of x; then the same for y on what is left (its ranks, its length);
//   2. per axis: min/max over what is left; a negative min shifts the axis by it (inf is kept, and
//      -inf - -inf is NaN, which makes numpy's min/max NaN); value = v / range * span + pad, with the
//      division corrected to the correctly rounded quotient (GLSL does not promise one) and no FMA;
//   3. numpy's uint16 cast made explicit: NaN/inf -> 0, truncation, int64 saturation, wrap mod 2^16;
//   4. points packed x | y << 16 at their rank after truncation, and per cloud (count, truncated,
//      degenerate axis: 0 none, 1 x, 2 y) in Info.
layout(local_size_x = 256) in;

layout(std430, binding = 4) readonly buffer Xs { double xs[]; };
layout(std430, binding = 5) readonly buffer Ys { double ys[]; };
layout(std430, binding = 6) writeonly buffer Pts { uint pts[]; };
layout(std430, binding = 7) writeonly buffer Info { uint info[]; };

uniform uint n_points;
uniform uint width;
uniform uint height;
uniform uint pad_x;
uniform uint pad_y;

const uint T = 256u;
shared uint s_count[T];
shared uint s_first;
shared uint s_any_nan_y;
shared double s_lo[T];
shared double s_hi[T];

uint c_base;
uint lo_i;
uint hi_i;

// Exclusive prefix sum of s_count over the invocations (Hillis-Steele in place); returns the total.
uint scan(uint v) {
    uint t = gl_LocalInvocationID.x;
    s_count[t] = v;
    barrier();
    for (uint off = 1u; off < T; off <<= 1u) {
        uint add = t >= off ? s_count[t - off] : 0u;
        barrier();
        s_count[t] += add;
        barrier();
    }
    uint total = s_count[T - 1u];
    uint excl = s_count[t] - v;
    barrier();
    s_count[t] = excl;
    barrier();
    return total;
}

// Index i is deleted by the cut around the first NaN at k in a sequence of length n.
bool in_cut(uint i, uint k, uint n) {
    if (k >= n) return false;
    if (k >= 100u) return i + 100u >= k && i < k;
    // k - 100 .. -1 wrap to n + k - 100 .. n - 1 (numpy); 0 .. k - 1 directly.
    return i < k || (n + k >= 100u && i >= n + k - 100u);
}

bool keep1(uint i, uint kx) {
    double x = xs[c_base + i];
    return !isnan(x) && !in_cut(i, kx, n_points);
}

#include "fp64.glsl"

uint np_u16(double v) {
    if (isnan(v) || isinf(v)) return 0u;
    double t = trunc(v);
    if (t >= 9223372036854775808.0) return 65535u; // i64::MAX & 0xffff
    if (t < -9223372036854775808.0) return 0u;     // i64::MIN & 0xffff
    precise double m = t - 65536.0 * floor(t / 65536.0);
    return uint(m);
}

// Reduces s_lo/s_hi (min/max) over the workgroup; the result is in [0].
void reduce_min_max() {
    uint t = gl_LocalInvocationID.x;
    for (uint off = T / 2u; off > 0u; off >>= 1u) {
        barrier();
        if (t < off) {
            s_lo[t] = min(s_lo[t], s_lo[t + off]);
            s_hi[t] = max(s_hi[t], s_hi[t + off]);
        }
    }
    barrier();
}

void main() {
    uint c = gl_WorkGroupID.x;
    uint t = gl_LocalInvocationID.x;
    uint n = n_points;
    c_base = c * n;
    uint per = (n + T - 1u) / T;
    lo_i = min(t * per, n);
    hi_i = min(lo_i + per, n);
    if (t == 0u) {
        s_first = n;
        s_any_nan_y = 0u;
    }
    barrier();
    // 1. x's first NaN; whether y has any.
    for (uint i = lo_i; i < hi_i; i++) {
        if (isnan(xs[c_base + i])) {
            atomicMin(s_first, i);
            break;
        }
    }
    for (uint i = lo_i; i < hi_i; i++) {
        if (isnan(ys[c_base + i])) {
            atomicOr(s_any_nan_y, 1u);
            break;
        }
    }
    barrier();
    uint kx = s_first;
    bool trunc_any = kx < n || s_any_nan_y != 0u;
    // Ranks after the x cut.
    uint k1 = 0u;
    for (uint i = lo_i; i < hi_i; i++) k1 += keep1(i, kx) ? 1u : 0u;
    // (The scan and the barriers run whether or not anything is cut: barriers stay in uniform,
    // unconditional flow.)
    uint n1 = scan(k1);
    uint base1 = s_count[t];
    // y's first NaN, by rank among the points x kept.
    if (t == 0u) s_first = n1;
    barrier();
    if (trunc_any) {
        uint r = base1;
        for (uint i = lo_i; i < hi_i; i++) {
            if (!keep1(i, kx)) continue;
            if (isnan(ys[c_base + i])) {
                atomicMin(s_first, r);
                break;
            }
            r++;
        }
    }
    barrier();
    uint ky = s_first;
    barrier();
    // Ranks after the y cut, and each axis' min/max over the points left.
    uint k2 = 0u;
    double inf = packDouble2x32(uvec2(0u, 0x7ff00000u));
    double lx = inf, hx = -inf, ly = inf, hy = -inf;
    {
        uint r = base1;
        for (uint i = lo_i; i < hi_i; i++) {
            bool kept = true;
            if (trunc_any) {
                if (!keep1(i, kx)) continue;
                double y = ys[c_base + i];
                kept = !isnan(y) && !in_cut(r, ky, n1);
                r++;
            }
            if (!kept) continue;
            k2++;
            double x = xs[c_base + i];
            double y = ys[c_base + i];
            lx = min(lx, x);
            hx = max(hx, x);
            ly = min(ly, y);
            hy = max(hy, y);
        }
    }
    uint n2 = scan(k2);
    uint base2 = s_count[t];
    s_lo[t] = lx;
    s_hi[t] = hx;
    reduce_min_max();
    double mnx = s_lo[0], mxx = s_hi[0];
    barrier();
    s_lo[t] = ly;
    s_hi[t] = hy;
    reduce_min_max();
    double mny = s_lo[0], mxy = s_hi[0];
    // The shift, and min/max after it: v - mn is monotone, so the new min is 0 and the new max
    // mx - mn, unless mn is -inf (then -inf - -inf is NaN, and numpy's min/max are NaN).
    bool shx = mnx < 0.0, shy = mny < 0.0;
    double nan_ = packDouble2x32(uvec2(0u, 0x7ff80000u));
    precise double rx = shx ? (isinf(mnx) ? nan_ : (mxx - mnx) - 0.0) : mxx - mnx;
    precise double ry = shy ? (isinf(mny) ? nan_ : (mxy - mny) - 0.0) : mxy - mny;
    double spx = double(width - 2u * pad_x), spy = double(height - 2u * pad_y);
    uint r1 = base1, out_i = base2;
    for (uint i = lo_i; i < hi_i; i++) {
        if (trunc_any) {
            if (!keep1(i, kx)) continue;
            double y0 = ys[c_base + i];
            bool kept = !isnan(y0) && !in_cut(r1, ky, n1);
            r1++;
            if (!kept) continue;
        }
        precise double x = xs[c_base + i];
        precise double y = ys[c_base + i];
        if (shx) x = x - mnx;
        if (shy) y = y - mny;
        precise double vx = div_rn(x, rx) * spx + double(pad_x);
        precise double vy = div_rn(y, ry) * spy + double(pad_y);
        pts[c_base + out_i] = np_u16(vx) | (np_u16(vy) << 16);
        out_i++;
    }
    if (t == 0u) {
        // ifs::degenerate_axis: zero width after the shift (NaN - NaN and -inf are not zero).
        uint deg = rx == 0.0 ? 1u : (ry == 0.0 ? 2u : 0u);
        if (n2 == 0u) deg = 0u;
        info[c * 4u + 0u] = n2;
        info[c * 4u + 1u] = n - n2;
        info[c * 4u + 2u] = deg;
        info[c * 4u + 3u] = 0u;
    }
}
