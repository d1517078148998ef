//! Rank, world size and local rank from the launcher's environment (torchrun, Open MPI, PMIx, MPICH/Hydra,
//! MVAPICH2, Slurm, Flux), in a fixed precedence so that nested launchers do not fool us.

use crate::error::{Error, Result};

/// Who this process is in the job, and where that came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rank {
    pub rank: u64,
    pub world: u64,
    pub local_rank: u64,
    pub source: String,
}

/// One process alone: rank 0 of 1.
impl Default for Rank {
    fn default() -> Self {
        Rank {
            rank: 0,
            world: 1,
            local_rank: 0,
            source: "one process".into(),
        }
    }
}

/// (rank variable, size variable) in precedence order. PMIx has no size variable: its size comes
/// from the next source that has one.
const SOURCES: &[(&str, Option<&str>)] = &[
    ("RANK", Some("WORLD_SIZE")),
    ("OMPI_COMM_WORLD_RANK", Some("OMPI_COMM_WORLD_SIZE")),
    ("PMIX_RANK", None),
    ("PMI_RANK", Some("PMI_SIZE")),
    ("MV2_COMM_WORLD_RANK", Some("MV2_COMM_WORLD_SIZE")),
    ("SLURM_PROCID", Some("SLURM_NTASKS")),
    ("FLUX_TASK_RANK", Some("FLUX_JOB_SIZE")),
];

const LOCAL_SOURCES: &[&str] = &[
    "LOCAL_RANK",
    "OMPI_COMM_WORLD_LOCAL_RANK",
    "PMIX_LOCAL_RANK",
    "MPI_LOCALRANKID",
    "PMI_LOCAL_RANK",
    "PALS_LOCAL_RANKID",
    "MV2_COMM_WORLD_LOCAL_RANK",
    "SLURM_LOCALID",
    "FLUX_TASK_LOCAL_ID",
];

fn parse(env: &dyn Fn(&str) -> Option<String>, var: &str) -> Result<Option<u64>> {
    match env(var) {
        None => Ok(None),
        Some(v) if v.trim().is_empty() => Ok(None),
        Some(v) => v.trim().parse().map(Some).map_err(|_| {
            Error::Other(format!(
                "environment variable {var}={v:?} is not a non-negative integer"
            ))
        }),
    }
}

/// Resolves rank and world size: explicit flags first, then the environment, then 0 of 1.
pub fn resolve(
    flag_rank: Option<u64>,
    flag_world: Option<u64>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Rank> {
    let local_rank = {
        let mut lr = None;
        for v in LOCAL_SOURCES {
            if let Some(x) = parse(env, v)? {
                lr = Some(x);
                break;
            }
        }
        lr
    };
    let (rank, world, source) = match (flag_rank, flag_world) {
        (Some(r), Some(w)) => (r, w, "--rank/--world-size".to_string()),
        (Some(_), None) | (None, Some(_)) => {
            return Err(Error::flag("--rank/--world-size", "give both or neither"));
        }
        (None, None) => {
            // torchrun sets both; WORLD_SIZE alone (an inherited or hand-set environment) would
            // otherwise be read as a single-rank run and silently render everything.
            if env("RANK").is_none_or(|v| v.trim().is_empty())
                && let Some(w) = parse(env, "WORLD_SIZE")?
            {
                return Err(Error::Other(format!(
                    "WORLD_SIZE={w} is set but RANK is not: set RANK too, unset WORLD_SIZE, or pass --rank/--world-size"
                )));
            }
            let mut found = None;
            for (i, (rv, sv)) in SOURCES.iter().enumerate() {
                let Some(r) = parse(env, rv)? else { continue };
                let size = match sv {
                    Some(sv) => parse(env, sv)?.map(|s| (s, format!("{rv}/{sv}"))),
                    None => {
                        // PMIx: take the size from a later source that has one.
                        let mut s = None;
                        for (_, sv2) in &SOURCES[i + 1..] {
                            if let Some(sv2) = sv2
                                && let Some(x) = parse(env, sv2)?
                            {
                                s = Some((x, format!("{rv} with size from {sv2}")));
                                break;
                            }
                        }
                        s
                    }
                };
                match size {
                    Some((w, src)) => {
                        found = Some((r, w, src));
                        break;
                    }
                    None => {
                        return Err(Error::Other(format!(
                            "{rv}={r} is set but no world size is: set {} or pass --rank/--world-size",
                            sv.unwrap_or("SLURM_NTASKS")
                        )));
                    }
                }
            }
            found.unwrap_or((0, 1, "no launcher variables: one process".to_string()))
        }
    };
    if world == 0 || rank >= world {
        return Err(Error::Other(format!(
            "rank {rank} is not below world size {world} (from {source})"
        )));
    }
    Ok(Rank {
        rank,
        world,
        local_rank: local_rank.unwrap_or(0),
        source,
    })
}

/// [`resolve`] against the process environment.
pub fn from_env(flag_rank: Option<u64>, flag_world: Option<u64>) -> Result<Rank> {
    resolve(flag_rank, flag_world, &|k| std::env::var(k).ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn with(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn world_size_without_rank_is_an_error() {
        let e = resolve(None, None, &with(&[("WORLD_SIZE", "4")])).unwrap_err();
        assert!(e.to_string().contains("RANK is not"), "{e}");
        // Flags override the environment.
        assert_eq!(
            resolve(Some(0), Some(1), &with(&[("WORLD_SIZE", "4")]))
                .unwrap()
                .world,
            1
        );
    }

    #[test]
    fn default_is_single_rank() {
        let r = resolve(None, None, &with(&[])).unwrap();
        assert_eq!((r.rank, r.world, r.local_rank), (0, 1, 0));
    }

    #[test]
    fn mpirun_inside_slurm_uses_ompi() {
        let env = with(&[
            ("SLURM_PROCID", "0"),
            ("SLURM_NTASKS", "1"),
            ("SLURM_LOCALID", "0"),
            ("OMPI_COMM_WORLD_RANK", "5"),
            ("OMPI_COMM_WORLD_SIZE", "8"),
            ("OMPI_COMM_WORLD_LOCAL_RANK", "1"),
        ]);
        let r = resolve(None, None, &env).unwrap();
        assert_eq!((r.rank, r.world, r.local_rank), (5, 8, 1));
        assert!(r.source.contains("OMPI"));
    }

    #[test]
    fn torchrun_beats_slurm_and_flags_beat_all() {
        let env = with(&[
            ("RANK", "3"),
            ("WORLD_SIZE", "4"),
            ("SLURM_PROCID", "1"),
            ("SLURM_NTASKS", "2"),
        ]);
        assert_eq!(resolve(None, None, &env).unwrap().rank, 3);
        let r = resolve(Some(1), Some(2), &env).unwrap();
        assert_eq!((r.rank, r.world), (1, 2));
    }

    #[test]
    fn pmix_takes_size_from_slurm() {
        let env = with(&[
            ("PMIX_RANK", "2"),
            ("SLURM_PROCID", "0"),
            ("SLURM_NTASKS", "4"),
        ]);
        let r = resolve(None, None, &env).unwrap();
        assert_eq!((r.rank, r.world), (2, 4));
    }

    #[test]
    fn precedence_order_of_the_rest() {
        let env = with(&[
            ("PMI_RANK", "1"),
            ("PMI_SIZE", "3"),
            ("MV2_COMM_WORLD_RANK", "2"),
            ("MV2_COMM_WORLD_SIZE", "4"),
        ]);
        assert_eq!(resolve(None, None, &env).unwrap().world, 3);
        let env = with(&[("FLUX_TASK_RANK", "1"), ("FLUX_JOB_SIZE", "2")]);
        assert_eq!(resolve(None, None, &env).unwrap().rank, 1);
    }

    #[test]
    fn invalid_values_are_errors() {
        assert!(resolve(None, None, &with(&[("RANK", "4"), ("WORLD_SIZE", "4")])).is_err());
        assert!(resolve(None, None, &with(&[("RANK", "x"), ("WORLD_SIZE", "4")])).is_err());
        assert!(resolve(None, None, &with(&[("RANK", "1")])).is_err());
        assert!(resolve(Some(1), None, &with(&[])).is_err());
    }
}
