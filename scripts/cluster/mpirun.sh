#!/bin/bash
# Plain Open MPI (or MPICH/Intel MPI: PMI_RANK/PMI_SIZE; MVAPICH2: MV2_COMM_WORLD_*), one rank per GPU.
#   scripts/cluster/mpirun.sh hostfile 16
set -euo pipefail
HOSTFILE=${1:?hostfile}; NP=${2:?number of ranks}
BIN=${BIN:-$PWD/target/release/fractaldb}
CLASSES=${CLASSES:-$PWD/data/csv_rate0.2_category1000}
OUT=${OUT:-$PWD/data/fdb1k-wds}
# More render flags, split on spaces (e.g. FRACTALDB_ARGS="--preset FractalDB-10k" with its CLASSES and OUT).
mpirun -np "$NP" -hostfile "$HOSTFILE" "$BIN" render --load-root "$CLASSES" --out "$OUT" --format wds --backend auto --resume ${FRACTALDB_ARGS:-}
"$BIN" finalize --out "$OUT"
