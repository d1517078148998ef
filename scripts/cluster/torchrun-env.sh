#!/bin/bash
# torchrun-style environment without torchrun (RANK, WORLD_SIZE, LOCAL_RANK), e.g. one node with 8 GPUs:
#   scripts/cluster/torchrun-env.sh 8
# The same variables are what torchrun/torch.distributed.run export, so the binary can also be started
# from a torchrun launcher script. Alternatively, one process for all GPUs: fractaldb render --gpus all.
set -euo pipefail
N=${1:-8}
BIN=${BIN:-$PWD/target/release/fractaldb}
CLASSES=${CLASSES:-$PWD/data/csv_rate0.2_category1000}
OUT=${OUT:-$PWD/data/fdb1k-wds}
# More render flags, split on spaces (e.g. FRACTALDB_ARGS="--preset FractalDB-10k" with its CLASSES and OUT).
pids=()
for r in $(seq 0 $((N - 1))); do
  RANK=$r WORLD_SIZE=$N LOCAL_RANK=$r "$BIN" render -q --load-root "$CLASSES" --out "$OUT" --format wds --backend auto --resume ${FRACTALDB_ARGS:-} &
  pids+=($!)
done
fail=0
for p in "${pids[@]}"; do wait "$p" || fail=1; done
[ $fail = 0 ] || { echo "a rank failed: rerun this script (finished shards are kept)"; exit 1; }
"$BIN" finalize --out "$OUT"
