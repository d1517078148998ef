//! Random streams compatible with the original generator.
//!
//! * [`Mt19937`]: the Mersenne Twister shared by numpy's legacy `RandomState` and CPython's `random`.
//! * [`NumpyRandom`]: numpy's legacy recipes (`seed`, `random_sample`, `randint(2,8)`, `uniform`).
//! * [`PyRandom`]: CPython's `random.seed(int)` and `randrange(1, 512)`.
//! * [`MaskKey`]: our default patch-mask generator, a pure function of
//!   (seed, class, row, instance, point index), so output never depends on scheduling.

const N: usize = 624;
const M: usize = 397;

/// MT19937 with the reference initialisers.
#[derive(Clone)]
pub struct Mt19937 {
    mt: [u32; N],
    idx: usize,
}

impl Mt19937 {
    /// `init_genrand(seed)`: numpy's legacy `RandomState(seed)` for a 32-bit integer seed.
    pub fn init_genrand(seed: u32) -> Self {
        let mut mt = [0u32; N];
        mt[0] = seed;
        for i in 1..N {
            mt[i] = 1_812_433_253u32
                .wrapping_mul(mt[i - 1] ^ (mt[i - 1] >> 30))
                .wrapping_add(i as u32);
        }
        Mt19937 { mt, idx: N }
    }

    /// `init_by_array(key)`: CPython's `random.seed(int)` with the 32-bit words of |seed|.
    pub fn init_by_array(key: &[u32]) -> Self {
        let mut s = Self::init_genrand(19_650_218);
        let mt = &mut s.mt;
        let (mut i, mut j) = (1usize, 0usize);
        let len = key.len().max(1);
        for _ in 0..N.max(len) {
            let prev = mt[i - 1] ^ (mt[i - 1] >> 30);
            mt[i] = (mt[i] ^ prev.wrapping_mul(1_664_525))
                .wrapping_add(key.get(j).copied().unwrap_or(0))
                .wrapping_add(j as u32);
            i += 1;
            j += 1;
            if i >= N {
                mt[0] = mt[N - 1];
                i = 1;
            }
            if j >= len {
                j = 0;
            }
        }
        for _ in 0..N - 1 {
            let prev = mt[i - 1] ^ (mt[i - 1] >> 30);
            mt[i] = (mt[i] ^ prev.wrapping_mul(1_566_083_941)).wrapping_sub(i as u32);
            i += 1;
            if i >= N {
                mt[0] = mt[N - 1];
                i = 1;
            }
        }
        mt[0] = 0x8000_0000;
        s
    }

    fn twist(&mut self) {
        const UPPER: u32 = 0x8000_0000;
        const LOWER: u32 = 0x7fff_ffff;
        const MATRIX_A: u32 = 0x9908_b0df;
        #[inline(always)]
        fn step(a: u32, b: u32, m: u32) -> u32 {
            let y = (a & UPPER) | (b & LOWER);
            m ^ (y >> 1) ^ (0u32.wrapping_sub(y & 1) & MATRIX_A)
        }
        let mt = &mut self.mt;
        // The reference loop split where `k + 1` and `k + M` wrap, so no index needs a modulo.
        for k in 0..N - M {
            mt[k] = step(mt[k], mt[k + 1], mt[k + M]);
        }
        for k in N - M..N - 1 {
            mt[k] = step(mt[k], mt[k + 1], mt[k + M - N]);
        }
        mt[N - 1] = step(mt[N - 1], mt[0], mt[M - 1]);
        self.idx = 0;
    }

    /// `genrand_int32`.
    #[inline]
    pub fn next_u32(&mut self) -> u32 {
        if self.idx >= N {
            self.twist();
        }
        let y = self.mt[self.idx];
        self.idx += 1;
        temper(y)
    }

    /// `out.len()` of numpy's 53-bit doubles (`random_sample`), as that many [`NumpyRandom::random`]
    /// calls would draw them: straight from the state block between twists, in a loop without
    /// the per-word index check.
    pub fn fill_doubles(&mut self, out: &mut [f64]) {
        let mut done = 0;
        while done < out.len() {
            if self.idx + 2 > N {
                // A double across a twist: word by word.
                let a = (self.next_u32() >> 5) as f64;
                let b = (self.next_u32() >> 6) as f64;
                out[done] = (a * 67_108_864.0 + b) / 9_007_199_254_740_992.0;
                done += 1;
                continue;
            }
            let take = ((N - self.idx) / 2).min(out.len() - done);
            let words = &self.mt[self.idx..self.idx + 2 * take];
            doubles_from_words(words, &mut out[done..done + take]);
            self.idx += 2 * take;
            done += take;
        }
    }

    /// Advance by `n` outputs without tempering them (the same state as `n` calls of `next_u32`).
    pub fn skip(&mut self, mut n: u64) {
        while n > 0 {
            if self.idx >= N {
                self.twist();
            }
            let take = ((N - self.idx) as u64).min(n);
            self.idx += take as usize;
            n -= take;
        }
    }
}

/// MT19937's output function.
#[inline(always)]
fn temper(mut y: u32) -> u32 {
    y ^= y >> 11;
    y ^= (y << 7) & 0x9d2c_5680;
    y ^= (y << 15) & 0xefc6_0000;
    y ^ (y >> 18)
}

/// numpy's `random_sample` of consecutive untempered state words, two per double. On x86-64 an
/// AVX2 copy of the loop is taken when the processor has it (the same arithmetic).
fn doubles_from_words(words: &[u32], out: &mut [f64]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the processor has AVX2 (checked just above), all the function requires.
        unsafe { doubles_from_words_avx2(words, out) };
        return;
    }
    doubles_from_words_any(words, out);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn doubles_from_words_avx2(words: &[u32], out: &mut [f64]) {
    doubles_from_words_any(words, out);
}

#[inline(always)]
fn doubles_from_words_any(words: &[u32], out: &mut [f64]) {
    for (o, w) in out.iter_mut().zip(words.chunks_exact(2)) {
        let a = (temper(w[0]) >> 5) as f64;
        let b = (temper(w[1]) >> 6) as f64;
        *o = (a * 67_108_864.0 + b) / 9_007_199_254_740_992.0;
    }
}

/// numpy's legacy `RandomState` recipes on top of MT19937.
#[derive(Clone)]
pub struct NumpyRandom {
    mt: Mt19937,
}

impl NumpyRandom {
    /// `np.random.seed(seed)` for a seed below 2^32.
    pub fn seed(seed: u32) -> Self {
        NumpyRandom {
            mt: Mt19937::init_genrand(seed),
        }
    }

    /// One 53-bit double in [0, 1) (`random_sample`).
    #[inline]
    pub fn random(&mut self) -> f64 {
        let a = (self.mt.next_u32() >> 5) as f64;
        let b = (self.mt.next_u32() >> 6) as f64;
        (a * 67_108_864.0 + b) / 9_007_199_254_740_992.0
    }

    /// `np.random.random(n)`.
    pub fn random_vec(&mut self, n: usize) -> Vec<f64> {
        let mut v = vec![0.0; n];
        self.fill_random(&mut v);
        v
    }

    /// `np.random.random(out.len())` into `out`.
    pub fn fill_random(&mut self, out: &mut [f64]) {
        self.mt.fill_doubles(out);
    }

    /// `np.random.randint(low, high)` for a span below 2^32 (masked rejection, legacy).
    pub fn randint(&mut self, low: i64, high: i64) -> i64 {
        let rng = (high - low - 1) as u32;
        if rng == 0 {
            return low;
        }
        let mask = u32::MAX >> rng.leading_zeros();
        loop {
            let v = self.mt.next_u32() & mask;
            if v <= rng {
                return low + v as i64;
            }
        }
    }

    /// `np.random.uniform(lo, hi)`.
    #[inline]
    pub fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.random()
    }

    /// Skip what `random(n)` would consume (2n words).
    pub fn skip_doubles(&mut self, n: usize) {
        self.mt.skip(2 * n as u64);
    }
}

/// CPython's `random` module, the parts the original uses.
#[derive(Clone)]
pub struct PyRandom {
    mt: Mt19937,
}

impl PyRandom {
    /// `random.seed(seed)` for an integer seed: `init_by_array` of the 32-bit words of |seed|.
    pub fn seed(seed: i128) -> Self {
        let mut n = seed.unsigned_abs();
        let mut key = Vec::new();
        while n > 0 {
            key.push(n as u32);
            n >>= 32;
        }
        if key.is_empty() {
            key.push(0);
        }
        PyRandom {
            mt: Mt19937::init_by_array(&key),
        }
    }

    /// The generator's state: its 624 words and position (what `random.getstate()` holds), for
    /// another process.
    pub fn state(&self) -> (Vec<u32>, usize) {
        (self.mt.mt.to_vec(), self.mt.idx)
    }

    /// A generator at a [`state`](Self::state); `None` when `words` and `idx` are not one.
    pub fn from_state(words: &[u32], idx: usize) -> Option<Self> {
        let mt: [u32; N] = words.try_into().ok()?;
        (idx <= N).then_some(PyRandom {
            mt: Mt19937 { mt, idx },
        })
    }

    /// `random.getrandbits(k)` for k <= 32.
    #[inline]
    pub fn getrandbits(&mut self, k: u32) -> u32 {
        self.mt.next_u32() >> (32 - k)
    }

    /// `random.random()`: 53 bits from two words, as numpy's `random_sample`.
    #[inline]
    pub fn random(&mut self) -> f64 {
        let a = (self.mt.next_u32() >> 5) as f64;
        let b = (self.mt.next_u32() >> 6) as f64;
        (a * 67_108_864.0 + b) * (1.0 / 9_007_199_254_740_992.0)
    }

    /// `_randbelow(n)` for 0 < n <= 2^32: `getrandbits(n.bit_length())`, redrawn while >= n.
    #[inline]
    pub fn randbelow(&mut self, n: u64) -> u64 {
        debug_assert!(n > 0 && n <= 1 << 32);
        let k = 64 - n.leading_zeros();
        loop {
            let r = if k == 0 {
                0
            } else {
                self.getrandbits(k) as u64
            };
            if r < n {
                return r;
            }
        }
    }

    /// `random.randint(a, b)` (= `randrange(a, b + 1)`) for a <= b and a span below 2^32.
    #[inline]
    pub fn randint(&mut self, a: i64, b: i64) -> i64 {
        a + self.randbelow((b - a + 1) as u64) as i64
    }

    /// `random.uniform(a, b)`: `a + (b - a) * random()`.
    #[inline]
    pub fn uniform(&mut self, a: f64, b: f64) -> f64 {
        a + (b - a) * self.random()
    }

    /// `random.expovariate(lambd)` as CPython 3.11 computes it: `-log(1 - random()) / lambd`.
    pub fn expovariate(&mut self, lambd: f64) -> f64 {
        -(1.0 - self.random()).ln() / lambd
    }

    /// Skips what `n` calls of `random()` (or `uniform`) would consume, without computing them.
    pub fn skip_doubles(&mut self, n: u64) {
        self.mt.skip(2 * n);
    }

    /// `random.randrange(1, 512)`: 1 + getrandbits(9), redrawn while >= 511.
    #[inline]
    pub fn randrange_1_512(&mut self) -> u16 {
        loop {
            let r = self.getrandbits(9);
            if r < 511 {
                return 1 + r as u16;
            }
        }
    }
}

/// A 32-bit integer hash with good avalanche ("lowbias32"); cheap on CPUs and in GLSL.
#[inline]
pub fn hash32(mut x: u32) -> u32 {
    x ^= x >> 16;
    x = x.wrapping_mul(0x7feb_352d);
    x ^= x >> 15;
    x = x.wrapping_mul(0x846c_a68b);
    x ^ (x >> 16)
}

/// The key of one patch instance for the counter-based mask generator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MaskKey {
    pub k0: u32,
    pub k1: u32,
}

impl MaskKey {
    /// Mixes (seed, class, weight row, instance) into two 32-bit words.
    pub fn new(seed: u64, class_key: u32, row: u32, instance: u32) -> Self {
        let mut h = hash32(seed as u32 ^ 0x5bd1_e995);
        h = hash32(h ^ (seed >> 32) as u32);
        h = hash32(h ^ class_key);
        h = hash32(h ^ row);
        let k0 = hash32(h ^ instance);
        let k1 = hash32(k0 ^ 0x68e3_1da4);
        MaskKey { k0, k1 }
    }

    /// The 9-bit mask (1..=511) of point `i`.
    #[inline]
    pub fn mask(&self, i: u32) -> u16 {
        let h = hash32(hash32(i.wrapping_add(self.k0)) ^ self.k1);
        1 + ((h as u64 * 511) >> 32) as u16
    }
}

/// The instance key of the counter masks: (seed, split, epoch) -> the counter generator's seed.
/// `(seed, train, 0)` is `seed` itself (the bytes of every earlier run); anything else is a 64-bit
/// mix of the three, so a validation split or another epoch draws masks unrelated to the training
/// split's (split 0 = train, 1 = val).
pub fn instance_seed(seed: u64, split: u32, epoch: u64) -> u64 {
    if split == 0 && epoch == 0 {
        return seed;
    }
    let w = |x: u32| hash32(x ^ 0x3c6e_f372);
    let a = hash32(seed as u32 ^ w(split)) ^ hash32((epoch as u32) ^ 0xa54f_f53a);
    let b = hash32((seed >> 32) as u32 ^ w(a)) ^ hash32(((epoch >> 32) as u32) ^ split);
    ((a as u64) << 32 | b as u64) ^ 0x9e37_79b9_7f4a_7c15
}

/// A stable 32-bit key of a class name (FNV-1a), so masks follow the class, not its position.
pub fn class_key(name: &str) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in name.bytes() {
        h ^= b as u32;
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numpy_seed_100_first_doubles() {
        // np.random.seed(100); np.random.random(3)
        let mut r = NumpyRandom::seed(100);
        assert_eq!(r.random(), 0.5434049417909654);
        assert_eq!(r.random(), 0.27836938509379616);
        assert_eq!(r.random(), 0.4245175907491331);
    }

    #[test]
    fn block_filled_doubles_are_the_one_by_one_doubles() {
        // From every word offset of a state block (doubles straddling a twist included), in
        // pieces of several lengths.
        for skip in [0u64, 1, 2, 311, 622, 623, 624, 625, 1247] {
            let mut a = NumpyRandom::seed(7);
            a.mt.skip(skip);
            let mut b = a.clone();
            let want: Vec<f64> = (0..2_000).map(|_| a.random()).collect();
            let mut got = vec![0.0; 2_000];
            for piece in got.chunks_mut(313) {
                b.fill_random(piece);
            }
            assert_eq!(got, want, "skip {skip}");
            assert_eq!(a.random(), b.random());
        }
    }

    #[test]
    fn mt_reference_init_genrand_5489() {
        // The reference implementation's first output for the default seed 5489.
        let mut mt = Mt19937::init_genrand(5489);
        assert_eq!(mt.next_u32(), 3_499_211_612);
    }

    #[test]
    fn skip_equals_draws() {
        let mut a = Mt19937::init_genrand(7);
        let mut b = a.clone();
        for _ in 0..5000 {
            a.next_u32();
        }
        b.skip(5000);
        assert_eq!(a.next_u32(), b.next_u32());
    }

    #[test]
    fn counter_masks_in_range_and_spread() {
        let k = MaskKey::new(0, class_key("00000"), 0, 0);
        let mut seen = [false; 512];
        for i in 0..100_000 {
            let m = k.mask(i);
            assert!((1..=511).contains(&m));
            seen[m as usize] = true;
        }
        assert!(seen[1..].iter().all(|&s| s));
        assert_ne!(k, MaskKey::new(0, class_key("00000"), 0, 1));
    }
}
