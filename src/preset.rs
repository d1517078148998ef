//! `--preset NAME`: the published datasets' settings as flags, each from the paper or script it
//! comes from (docs/usage.md has the table). A preset's flags are placed before the user's, so any
//! flag given overrides it (every command takes a flag's last value).

use std::ffi::OsString;

pub struct Preset {
    pub name: &'static str,
    /// The command it is for: `search`, `render`, `rcdb` or `mvfdb`.
    pub command: &'static str,
    pub flags: &'static [&'static str],
    /// Where the settings come from.
    pub source: &'static str,
}

macro_rules! fdb {
    ($name:literal, $n:literal, $digits:literal, $source:literal) => {
        [
            Preset {
                name: $name,
                command: "search",
                flags: &[
                    "--categories",
                    $n,
                    "--rate",
                    "0.2",
                    "--points",
                    "100000",
                    "--seed",
                    "1",
                    "--class-digits",
                    $digits,
                ],
                source: $source,
            },
            Preset {
                name: $name,
                command: "render",
                flags: &[
                    "--load-root",
                    concat!("./data/csv_rate0.2_category", $n),
                    "--out",
                    concat!("./data/FractalDB-", $n),
                    "--image-size-x",
                    "362",
                    "--image-size-y",
                    "362",
                    "--iteration",
                    "200000",
                    "--draw-type",
                    "patch_gray",
                    "--weight-csv",
                    "builtin:0.4",
                    "--instance",
                    "10",
                ],
                source: $source,
            },
        ]
    };
}

const FDB_1K: [Preset; 2] = fdb!(
    "FractalDB-1k",
    "1000",
    "5",
    "FractalDB's exe.sh (ACCV 2020)"
);
const FDB_10K: [Preset; 2] = fdb!(
    "FractalDB-10k",
    "10000",
    "5",
    "the ViT paper's FractalDB-10k (AAAI 2022)"
);
const FDB_21K: [Preset; 2] = fdb!(
    "FractalDB-21k",
    "21000",
    "7",
    "CVPR 2022 (arXiv 2206.09132)"
);
const FDB_50K: [Preset; 2] = fdb!(
    "FractalDB-50k",
    "50000",
    "7",
    "CVPR 2022; the ABCI benchmark scripts"
);
const FDB_100K: [Preset; 2] = fdb!(
    "FractalDB-100k",
    "100000",
    "7",
    "the ABCI benchmark scripts"
);
const FDB_300K: [Preset; 2] = fdb!(
    "FractalDB-300k",
    "300000",
    "7",
    "the ABCI benchmark scripts"
);

const OTHERS: [Preset; 7] = [
    Preset {
        name: "2D-OFDB-1k",
        command: "search",
        flags: &[
            "--categories",
            "1000",
            "--rate",
            "0.2",
            "--points",
            "100000",
            "--seed",
            "1",
        ],
        source: "exe_parallel.sh's values (its exe.sh fails as written): one image per class",
    },
    Preset {
        name: "2D-OFDB-1k",
        command: "render",
        flags: &[
            "--load-root",
            "./data/csv_rate0.2_category1000",
            "--out",
            "./data/2D-OFDB-1k",
            "--image-size-x",
            "362",
            "--image-size-y",
            "362",
            "--iteration",
            "200000",
            "--draw-type",
            "patch_gray",
            "--weight-csv",
            "builtin:0.4",
            "--instance",
            "1",
            "--weight-rows",
            "0",
            "--flips",
            "0",
        ],
        source: "exe_parallel.sh's values (its exe.sh fails as written): one image per class",
    },
    Preset {
        name: "RCDB-1k",
        command: "rcdb",
        flags: &[
            "--numof_classes",
            "1000",
            "--numof_instances",
            "1000",
            "--numof_thread",
            "40",
            "--image_size",
            "512",
        ],
        source: "RCDB's exe_scripts/exe_rcdb_1k.sh (CVPR 2022)",
    },
    Preset {
        name: "RCDB-21k",
        command: "rcdb",
        flags: &[
            "--numof_classes",
            "21000",
            "--numof_instances",
            "1000",
            "--numof_thread",
            "40",
            "--image_size",
            "512",
        ],
        source: "RCDB's exe_scripts/exe_rcdb_21k.sh (CVPR 2022)",
    },
    Preset {
        name: "MV-FractalDB-1k",
        command: "mvfdb",
        flags: &[
            "--classes",
            "1000",
            "--variance",
            "0.05",
            "--weight-csv",
            "builtin",
            "--views",
            "12",
            "--img_size",
            "224",
        ],
        source: "ExFractalDB_render.sh (CVPR 2022): 1,000 x 145 models x 12 views",
    },
    Preset {
        name: "ExFractalDB-1k",
        command: "mvfdb",
        flags: &[
            "--classes",
            "1000",
            "--variance",
            "0.05",
            "--weight-csv",
            "builtin",
            "--views",
            "random",
            "--img_size",
            "224",
        ],
        source: "MV-FractalDB-1k's models with our random views (the original has none)",
    },
    Preset {
        name: "ExFractalDB-21k",
        command: "mvfdb",
        flags: &[
            "--classes",
            "21000",
            "--variance",
            "0.05",
            "--weight-csv",
            "builtin",
            "--views",
            "random",
            "--img_size",
            "224",
        ],
        source: "21,000 classes of MV-FractalDB models with our random views",
    },
];

/// Every preset, in the docs' order.
pub fn all() -> impl Iterator<Item = &'static Preset> {
    [
        &FDB_1K[..],
        &FDB_10K,
        &FDB_21K,
        &FDB_50K,
        &FDB_100K,
        &FDB_300K,
        &OTHERS,
    ]
    .into_iter()
    .flatten()
}

/// The `--preset` values `command` takes (a clap value parser: others are refused, listed).
pub fn parser(command: &'static str) -> clap::builder::PossibleValuesParser {
    let names: Vec<&'static str> = all()
        .filter(|p| p.command == command)
        .map(|p| p.name)
        .collect();
    clap::builder::PossibleValuesParser::new(names)
}

/// `argv` with the flags of its `--preset` (if any, and known for its command) inserted right
/// after the command's name, before the user's own flags.
pub fn expand(argv: Vec<OsString>) -> Vec<OsString> {
    let Some(command) = argv.get(1).and_then(|c| c.to_str()).map(String::from) else {
        return argv;
    };
    let mut name = None;
    for (i, a) in argv.iter().enumerate().skip(2) {
        let a = a.to_string_lossy();
        if let Some(v) = a.strip_prefix("--preset=") {
            name = Some(v.to_string());
        } else if a == "--preset" {
            name = argv.get(i + 1).map(|v| v.to_string_lossy().into_owned());
        }
    }
    let Some(p) = name.and_then(|n| all().find(|p| p.name == n && p.command == command)) else {
        return argv;
    };
    let mut out = argv[..2].to_vec();
    out.extend(p.flags.iter().map(OsString::from));
    out.extend(argv[2..].iter().cloned());
    out
}
