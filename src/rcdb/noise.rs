//! `pnoise1` of the `noise` package (1.2.2) with its defaults (one octave, repeat 1024, base 0):
//! Perlin's gradient noise in one dimension, computed in single precision and widened to double.

/// Ken Perlin's reference permutation (the package's table repeats it; only the first 256 are read).
const PERM: [u8; 256] = [
    151, 160, 137, 91, 90, 15, 131, 13, 201, 95, 96, 53, 194, 233, 7, 225, 140, 36, 103, 30, 69,
    142, 8, 99, 37, 240, 21, 10, 23, 190, 6, 148, 247, 120, 234, 75, 0, 26, 197, 62, 94, 252, 219,
    203, 117, 35, 11, 32, 57, 177, 33, 88, 237, 149, 56, 87, 174, 20, 125, 136, 171, 168, 68, 175,
    74, 165, 71, 134, 139, 48, 27, 166, 77, 146, 158, 231, 83, 111, 229, 122, 60, 211, 133, 230,
    220, 105, 92, 41, 55, 46, 245, 40, 244, 102, 143, 54, 65, 25, 63, 161, 1, 216, 80, 73, 209, 76,
    132, 187, 208, 89, 18, 169, 200, 196, 135, 130, 116, 188, 159, 86, 164, 100, 109, 198, 173,
    186, 3, 64, 52, 217, 226, 250, 124, 123, 5, 202, 38, 147, 118, 126, 255, 82, 85, 212, 207, 206,
    59, 227, 47, 16, 58, 17, 182, 189, 28, 42, 223, 183, 170, 213, 119, 248, 152, 2, 44, 154, 163,
    70, 221, 153, 101, 155, 167, 43, 172, 9, 129, 22, 39, 253, 19, 98, 108, 110, 79, 113, 224, 232,
    178, 185, 112, 104, 218, 246, 97, 228, 251, 34, 242, 193, 238, 210, 144, 12, 191, 179, 162,
    241, 81, 51, 145, 235, 249, 14, 239, 107, 49, 192, 214, 31, 181, 199, 106, 157, 184, 84, 204,
    176, 115, 121, 50, 45, 127, 4, 150, 254, 138, 236, 205, 93, 222, 114, 67, 29, 24, 72, 243, 141,
    128, 195, 78, 66, 215, 61, 156, 180,
];

const REPEAT: i32 = 1024;

/// The package's one-dimensional gradient: slope `(hash & 7) + 1`, or -1 (not the negated slope)
/// when bit 3 is set.
#[inline]
fn grad(hash: u8, x: f32) -> f32 {
    let g = if hash & 8 != 0 {
        -1.0
    } else {
        ((hash & 7) + 1) as f32
    };
    g * x
}

/// `noise.pnoise1(x)`: the argument is narrowed to `f32` as the C extension parses it, every
/// operation is single precision in the package's order, and the result is widened.
#[inline]
pub fn pnoise1(x: f64) -> f64 {
    let x = x as f32;
    let fl = x.floor();
    // C's `%` truncates toward zero like Rust's, and `& 255` of a negative int is two's complement.
    let i = (fl as i32) % REPEAT;
    let ii = (i + 1) % REPEAT;
    let (i, ii) = ((i & 255) as usize, (ii & 255) as usize);
    let x = x - fl;
    let fx = x * x * x * (x * (x * 6.0 - 15.0) + 10.0);
    let a = grad(PERM[i], x);
    let b = grad(PERM[ii], x - 1.0);
    ((a + fx * (b - a)) * 0.4) as f64
}

#[cfg(test)]
mod tests {
    use super::pnoise1;

    /// Every value of the reference table (made with the package itself), bit for bit.
    #[test]
    fn equals_the_reference_table() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/reference/rcdb/pnoise1.csv"
        );
        let text =
            std::fs::read_to_string(path).expect("pnoise1.csv in tests/fixtures/reference/rcdb");
        let mut n = 0;
        for (i, line) in text.lines().enumerate().skip(1) {
            let (x, want) = line.split_once(',').unwrap();
            let (x, want): (f64, f64) = (x.parse().unwrap(), want.parse().unwrap());
            assert_eq!(
                pnoise1(x).to_bits(),
                want.to_bits(),
                "line {}: pnoise1({x})",
                i + 1
            );
            n += 1;
        }
        assert_eq!(n, 1000);
    }
}
