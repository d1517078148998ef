// CPU twin: IEEE f64 division and rounding as the CPU does them. Compared by: tests/gl_rescale.rs
// gpu_rescale_equals_the_cpu_rescale_point_for_point.
// fp64 helpers shared by the compute shaders that must match the CPU engine bit for bit (GLSL does
// not promise a correctly rounded double division; IEEE and the CPU do).

// The next double above / below a positive finite one.
double next_up(double v) {
    uvec2 b = unpackDouble2x32(v);
    b.x += 1u;
    if (b.x == 0u) b.y += 1u;
    return packDouble2x32(b);
}
double next_down(double v) {
    uvec2 b = unpackDouble2x32(v);
    if (b.x == 0u) b.y -= 1u;
    b.x -= 1u;
    return packDouble2x32(b);
}

// a / b correctly rounded for a >= 0 and b > 0 (the only case the rescale meets besides the
// specials handled first): the residual a - q*b is exact in one fma, and q moves towards a/b while
// that shrinks the residual.
double div_rn(double a, double b) {
    if (isnan(a) || isnan(b)) return a + b;
    if (isinf(b)) return isinf(a) ? (a - a) : 0.0;
    if (isinf(a) || b == 0.0) return a / b;
    precise double q = a / b;
    if (q <= 0.0 || isinf(q)) return q;
    for (int it = 0; it < 4; it++) {
        precise double r = fma(-q, b, a);
        if (r == 0.0) break;
        double q2 = r > 0.0 ? next_up(q) : next_down(q);
        precise double r2 = fma(-q2, b, a);
        if (abs(r2) < abs(r)) q = q2; else break;
    }
    return q;
}

double f64_nan() { return packDouble2x32(uvec2(0u, 0x7ff80000u)); }
double f64_inf() { return packDouble2x32(uvec2(0u, 0x7ff00000u)); }
bool f64_sign(double v) { return (unpackDouble2x32(v).y & 0x80000000u) != 0u; }

// a / b correctly rounded, every sign and special as IEEE 754 gives it.
double div_ieee(double a, double b) {
    if (isnan(a) || isnan(b)) return f64_nan();
    bool neg = f64_sign(a) != f64_sign(b);
    double x = abs(a), y = abs(b);
    double q;
    if (isinf(x)) q = isinf(y) ? f64_nan() : f64_inf();
    else if (isinf(y)) q = 0.0;
    else if (y == 0.0) q = x == 0.0 ? f64_nan() : f64_inf();
    else if (x == 0.0) q = 0.0;
    else q = div_rn(x, y);
    return neg ? -q : q;
}
