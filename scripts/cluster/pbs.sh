#!/bin/bash
# PBS Professional (e.g. ABCI 3.0, 8 x H200 per node): PBS gives no per-process rank, so mpirun does;
# fractaldb reads OMPI_COMM_WORLD_RANK / _SIZE / _LOCAL_RANK (no MPI library is linked).
#   qsub scripts/cluster/pbs.sh
#PBS -q rt_HF
#PBS -l select=2:ncpus=192:ngpus=8:mpiprocs=8
#PBS -l walltime=02:00:00
#PBS -N fractaldb
set -euo pipefail
cd "$PBS_O_WORKDIR"
BIN=${BIN:-$PWD/target/release/fractaldb}
CLASSES=${CLASSES:-$PWD/data/csv_rate0.2_category1000}
OUT=${OUT:-$PWD/data/fdb1k-wds}
# More render flags, split on spaces (e.g. FRACTALDB_ARGS="--preset FractalDB-10k" with its CLASSES and OUT).
NP=$(wc -l < "$PBS_NODEFILE")
mpirun -np "$NP" -hostfile "$PBS_NODEFILE" -x PATH -x LD_LIBRARY_PATH \
  "$BIN" render --load-root "$CLASSES" --out "$OUT" --format wds --backend auto --resume ${FRACTALDB_ARGS:-}
"$BIN" finalize --out "$OUT"
