//! Property-based tests (proptest): the CSV and weights parsers never panic and round-trip what
//! they accept, the geometry validation holds its promise, and the shard order is a bijection onto
//! the samples with bounded shards, for random sizes, seeds and ranks.

use fractaldb::ifs::{Ifs, Map, parse_rows, parse_weights};
use fractaldb::plan::{Class, Layout, Plan};
use fractaldb::render::{DrawMode, MaskRng, RenderConfig};
use proptest::prelude::*;
use std::path::{Path, PathBuf};

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 96,
        ..ProptestConfig::default()
    }
}

fn plan(classes: usize, rows: usize, instances: u32) -> Plan {
    Plan::with_rows(
        (0..classes)
            .map(|i| Class {
                name: format!("{i:05}"),
                path: PathBuf::new(),
                ifs: Ifs { maps: vec![] },
                key: i as u32,
            })
            .collect(),
        vec![[1.0; 6]; rows],
        instances,
    )
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn class_csvs_round_trip(maps in prop::collection::vec(prop::array::uniform7(-1e300f64..1e300), 1..6)) {
        let ifs = Ifs {
            maps: maps
                .iter()
                .map(|v| Map { a: v[0], b: v[1], c: v[2], d: v[3], e: v[4], f: v[5], p: v[6] })
                .collect(),
        };
        let text = ifs.to_csv();
        let back = Ifs::parse_csv(Path::new("x.csv"), &text).unwrap();
        prop_assert_eq!(back.to_csv(), text);
        // CRLF reads the same.
        let crlf = Ifs::parse_csv(Path::new("x.csv"), &ifs.to_csv().replace('\n', "\r\n")).unwrap();
        prop_assert_eq!(crlf.to_csv(), ifs.to_csv());
    }

    #[test]
    fn parsers_never_panic_and_name_the_line(text in "[0-9eE.,+\\- \\n\\r#a-z]{0,200}") {
        match parse_rows(Path::new("f.csv"), &text, 7, "a,b,c,d,e,f,p") {
            Ok(rows) => prop_assert!(rows.iter().all(|r| r.len() == 7 && r.iter().all(|v| v.is_finite()))),
            Err(e) => prop_assert!(e.to_string().starts_with("f.csv"), "{}", e),
        }
        match parse_weights(Path::new("w.csv"), &text) {
            Ok(rows) => prop_assert!(rows.iter().all(|r| r.iter().all(|v| v.is_finite()))),
            Err(e) => prop_assert!(e.to_string().starts_with("w.csv"), "{}", e),
        }
    }

    #[test]
    fn geometry_validation_keeps_its_promise(
        w in 0u32..20000, h in 0u32..20000, px in 0u32..5000, py in 0u32..5000, it in 0usize..3
    ) {
        let cfg = RenderConfig {
            width: w, height: h, pad_x: px, pad_y: py, iterations: it,
            mode: DrawMode::PatchGray, masks: MaskRng::Counter { seed: 0 },
        };
        if cfg.validate().is_ok() {
            prop_assert!(it >= 1 && px >= 1 && py >= 1 && w > 2 * px && h > 2 * py);
            prop_assert!(w <= 16384 && h <= 16384);
        }
    }

    #[test]
    fn the_shard_order_is_a_bijection_with_bounded_shards(
        classes in 1usize..40, rows in 1usize..12, instances in 1u32..6,
        per_shard in 1u64..400, seed in any::<u64>(), world in 1u64..5
    ) {
        let plan = plan(classes, rows, instances);
        let l = Layout::new(&plan, per_shard, seed);
        let mut seen = vec![false; l.total as usize];
        let mut owner = vec![u64::MAX; l.shards as usize];
        for q in 0..l.clouds {
            for p in l.place_cloud(q) {
                prop_assert!(l.shard_range(p.shard).contains(&p.pos));
                prop_assert!(!seen[p.pos as usize]);
                seen[p.pos as usize] = true;
                // Every image of a cloud belongs to one block, hence one rank.
                let rank = l.block_of(p.shard) % world;
                let o = &mut owner[p.shard as usize];
                prop_assert!(*o == u64::MAX || *o == rank);
                *o = rank;
            }
        }
        prop_assert!(seen.iter().all(|&b| b));
        let mut next = 0;
        for s in 0..l.shards {
            let r = l.shard_range(s);
            prop_assert_eq!(r.start, next);
            prop_assert!(r.end - r.start <= per_shard);
            next = r.end;
        }
        prop_assert_eq!(next, l.total);
    }
}
