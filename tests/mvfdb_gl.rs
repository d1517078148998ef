//! glsl/mvfdb_chaos.comp and glsl/mvfdb_normalize.comp against their CPU twin (`mvfdb::instance`,
//! then the f32 cast the views draw): every point bit for bit on Mesa's llvmpipe, and the NaN flag
//! of every model (searched classes under every multiplier row, and maps scaled until their orbits
//! overflow to inf and NaN).

use fractaldb::mvfdb::gl::{Done, ModelIn, MvGl};
use fractaldb::mvfdb::{POINTS, builtin_multipliers_csv, instance, search, weighted_maps};
use fractaldb::rng::NumpyRandom;

#[test]
fn device_models_equal_the_cpu_models_bit_for_bit() {
    let mults: Vec<[f64; 12]> = builtin_multipliers_csv()
        .lines()
        .map(|l| {
            let v: Vec<f64> = l.split(',').map(|x| x.parse().unwrap()).collect();
            v.try_into().unwrap()
        })
        .collect();
    let classes = search(5, 3, 0.05).unwrap();
    // (maps, row) pairs: three classes under spread-out rows, and the first class blown up by
    // growing factors (contractive, then diverging to inf/NaN).
    let mut cases: Vec<(Vec<[f64; 13]>, [f64; 12])> = Vec::new();
    for (c, maps) in classes.iter().enumerate() {
        for r in (c..mults.len()).step_by(11) {
            cases.push((maps.clone(), mults[r]));
        }
    }
    for scale in [1.5, 2.5, 4.0, 1e3, 1e150] {
        cases.push((classes[0].clone(), [scale; 12]));
        let mut row = [1.0; 12];
        row[0] = scale; // x alone grows
        cases.push((classes[1].clone(), row));
    }
    let mut rng = NumpyRandom::seed(9);
    let us: Vec<Vec<f64>> = cases.iter().map(|_| rng.random_vec(POINTS)).collect();
    let maps: Vec<Vec<[f64; 13]>> = cases.iter().map(|(m, r)| weighted_maps(m, r)).collect();
    let models: Vec<ModelIn> = maps
        .iter()
        .zip(&us)
        .map(|(maps, u)| ModelIn { maps, u })
        .collect();
    let mut gl: MvGl<u32> = MvGl::new(Default::default()).expect("an EGL device (Mesa llvmpipe)");
    gl.models(&models, &[]).unwrap();
    let mut flags = None;
    for (d, data) in gl.collect(true).unwrap() {
        if let Done::Flags(_) = d {
            flags = Some(data);
        }
    }
    let flags = flags.expect("the batch's NaN flags");
    let (mut valid, mut invalid) = (0, 0);
    for (m, ((maps, row), u)) in cases.iter().zip(&us).enumerate() {
        let cpu = instance(maps, row, u);
        let flag = u32::from_le_bytes(flags[m * 4..m * 4 + 4].try_into().unwrap());
        assert_eq!(flag != 0, cpu.is_none(), "model {m}: the NaN flag");
        let Some(cpu) = cpu else {
            invalid += 1;
            continue;
        };
        valid += 1;
        let dev = gl.read_points(m).unwrap();
        assert_eq!(dev.len(), POINTS - 1);
        for (i, p) in dev.iter().enumerate() {
            for a in 0..3 {
                let want = cpu[a][i] as f32;
                assert!(
                    p[a].to_bits() == want.to_bits() || (p[a].is_nan() && want.is_nan()),
                    "model {m}, point {i}, axis {a}: device {} cpu {want}",
                    p[a]
                );
            }
        }
    }
    assert!(
        valid >= 20 && invalid >= 3,
        "{valid} valid, {invalid} NaN models"
    );
}
