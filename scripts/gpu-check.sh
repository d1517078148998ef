#!/usr/bin/env bash
# One prepared check for an NVIDIA machine (run from the repository root, with the release binary built
# elsewhere and carried along, plus .gl/ from scripts/fetch-gl-debs.sh):
#   1. unpack the glvnd EGL loader if the machine lacks libEGL.so.1, point glvnd at the NVIDIA vendor JSON;
#   2. `fractaldb devices`;
#   3. parity: GPU search == CPU search; GL renders (both raster paths, GPU and CPU rescale) == CPU renders;
#      GL shards == CPU shards at 100 shards; byte for byte;
#   4. throughput: `fractaldb bench --backend cpu,gl` at FractalDB-1k settings (100 shards, folder beside),
#      then the GL rows alone on more classes (the steady state: several device-sized batches);
#   5. RCDB: GL == CPU (folders and shards), then `bench --family rcdb --backend cpu,gl`;
#   6. MV-FractalDB: how many GL views differ from the CPU engine (llvmpipe's arithmetic, equal to every
#      golden), then `bench --family mvfdb --backend cpu,gl` at the defaults (224x224, 10,000 points, 12 views);
#   7. training on the fly (when the machine's python3 has torch and numpy, and the abi3 wheel was built
#      here with `maturin build --release` and carried as target/wheels): scripts/bench-python.py for
#      FractalDB and RCDB on the CPU and the GL engine, fork and spawn workers, 2 workers, with a
#      ResNet-18's training-step rate fed by the loader (CUDA in the parent, EGL in the workers).
# Results go to $OUT (or ./gpu-check-out), each step's as soon as it ends. Works on Mesa too (then the GL
# figures are llvmpipe's). Sizes: GPU_CHECK_CLASSES (parity and the first bench), GPU_CHECK_GL_CLASSES,
# GPU_CHECK_ITER, GPU_CHECK_SIZE, GPU_CHECK_REPEAT.
set -euo pipefail
out=${OUT:-gpu-check-out}
mkdir -p "$out"
bin=${FRACTALDB_BIN:-./target/release/fractaldb}
classes=${GPU_CHECK_CLASSES:-8}
gl_classes=${GPU_CHECK_GL_CLASSES:-64}
iter=${GPU_CHECK_ITER:-200000}
size=${GPU_CHECK_SIZE:-362}
repeat=${GPU_CHECK_REPEAT:-2}
if ! ldconfig -p | grep -q 'libEGL.so.1 ' && ls .gl/*.deb >/dev/null 2>&1; then
  for f in .gl/*.deb; do dpkg -x "$f" /; done
  ldconfig
fi
for j in /usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json /usr/share/glvnd/egl_vendor.d/10_nvidia.json; do
  if [ -f "$j" ] && [ -z "${__EGL_VENDOR_LIBRARY_FILENAMES:-}" ]; then export __EGL_VENDOR_LIBRARY_FILENAMES=$j; fi
done
{
  echo "== $(date -u +%FT%TZ) $(uname -m) $(nproc) cores"
  (nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo "no nvidia-smi")
  echo "== fractaldb devices"
  "$bin" devices
} 2>&1 | tee "$out/devices.txt"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "== parity" | tee "$out/parity.txt"
"$bin" search -q --categories "$classes" --backend cpu --out "$work/cpu-search"
"$bin" search --categories "$classes" --backend gl --out "$work/gl-search" 2>&1 | grep -E 'chaos games on' | tee -a "$out/parity.txt"
diff -r "$work/cpu-search" "$work/gl-search" && echo "search: GPU == CPU for $classes classes" | tee -a "$out/parity.txt"
load="$work/cpu-search/csv_rate0.2_category$classes"
common=(render --load-root "$load" --instance 2 --image-size-x "$size" --image-size-y "$size" --iteration "$iter")
"$bin" "${common[@]}" -q --backend cpu --out "$work/r-cpu"
same() { # name dir-a dir-b
  if diff -r -q "$2" "$3" >/dev/null; then
    echo "$1: GPU == CPU, $(find "$2" -name '*.png' -o -name '*.tar' | wc -l) files identical" | tee -a "$out/parity.txt"
  else
    echo "$1: $(diff -r -q "$2" "$3" | wc -l) files DIFFER" | tee -a "$out/parity.txt"
  fi
}
for v in "compute gpu" "points gpu" "compute cpu"; do
  set -- $v
  "$bin" "${common[@]}" --backend gl --raster "$1" --rescale "$2" --out "$work/r-gl-$1-$2" 2>&1 | grep -E '^(backend|done)' | tee -a "$out/parity.txt"
  same "render ($1 raster, $2 rescale)" "$work/r-cpu" "$work/r-gl-$1-$2"
done
per=$(( (classes * 25 * 2 * 4 + 99) / 100 ))
"$bin" "${common[@]}" -q --backend cpu --format wds --samples-per-shard "$per" --out "$work/w-cpu"
"$bin" "${common[@]}" --backend gl --format wds --samples-per-shard "$per" --out "$work/w-gl" 2>&1 | grep -E '^done' | tee -a "$out/parity.txt"
same "shards ($per per shard)" "$work/w-cpu" "$work/w-gl"

echo "== throughput"
bargs=(--image-size "$size" --iteration "$iter" --repeat "$repeat")
"$bin" bench --backend cpu,gl --classes "$classes" "${bargs[@]}" --json --plot "$out/bench.svg" > "$out/bench.json" 2> "$out/bench.txt"
cat "$out/bench.txt"
"$bin" bench --backend gl --classes "$gl_classes" "${bargs[@]}" --repeat 1 --json --plot "$out/bench-gl.svg" > "$out/bench-gl.json" 2> "$out/bench-gl.txt"
cat "$out/bench-gl.txt"
echo "== rcdb" | tee "$out/rcdb.txt"
rargs=(rcdb --numof_classes 8 --numof_instances 40 --numof_thread 4)
"$bin" "${rargs[@]}" -q --backend cpu --save_root "$work/rc-cpu"
"$bin" "${rargs[@]}" --backend gl --save_root "$work/rc-gl" 2>&1 | grep -E '^(rcdb backend|done)' | tee -a "$out/rcdb.txt"
same "rcdb folders" "$work/rc-cpu" "$work/rc-gl"
"$bin" "${rargs[@]}" -q --backend cpu --format wds --samples-per-shard 50 --save_root "$work/rw-cpu"
"$bin" "${rargs[@]}" -q --backend gl --format wds --samples-per-shard 50 --save_root "$work/rw-gl"
same "rcdb shards" "$work/rw-cpu" "$work/rw-gl"
"$bin" bench --family rcdb --backend cpu,gl --classes 16 --rcdb-instances 100 --shards 16 --repeat "$repeat" --json > "$out/bench-rcdb.json" 2> "$out/bench-rcdb.txt"
cat "$out/bench-rcdb.txt"
echo "== mvfdb" | tee "$out/mvfdb.txt"
margs=(mvfdb --classes 4 --weight-csv "${MVFDB_WEIGHTS:-builtin}" --weight-rows 0-19 --model-seed 7 --view-seed 11)
"$bin" "${margs[@]}" -q --backend cpu --save_root "$work/mv-cpu"
/usr/bin/time -f "gl: %e s wall" "$bin" "${margs[@]}" --backend gl --save_root "$work/mv-gl" 2>&1 | tail -3 | tee -a "$out/mvfdb.txt"
# A GPU's point rasteriser may differ from llvmpipe's: count the differing images.
echo "mvfdb views: $(diff -rq "$work/mv-cpu/images" "$work/mv-gl/images" | wc -l) of $(find "$work/mv-cpu/images" -name '*.png' | wc -l) images differ (GPU vs CPU emulation of llvmpipe)" | tee -a "$out/mvfdb.txt"
"$bin" bench --family mvfdb --backend cpu,gl --classes 4 --repeat "$repeat" --json > "$out/bench-mvfdb.json" 2> "$out/bench-mvfdb.txt"
cat "$out/bench-mvfdb.txt"
echo "== python (on the fly)" | tee "$out/python.txt"
wheel=$(ls target/wheels/fractaldb-*abi3*.whl 2>/dev/null | head -1 || true)
if [ -n "$wheel" ] && python3 -c 'import torch, numpy, torchvision' 2>/dev/null; then
  python3 -m pip install -q --no-deps --no-index --target "$work/py" "$wheel"
  pyclasses=${GPU_CHECK_PY_CLASSES:-16}
  for fam in fractaldb rcdb; do
    for run in "cpu fork" "gl fork" "gl spawn"; do
      set -- $run
      PYTHONPATH="$work/py" timeout 900 python3 scripts/bench-python.py --family "$fam" --classes "$pyclasses" \
        --backend "$1" --start-method "$2" --workers 2 --threads "$(nproc)" --train resnet18 --train-steps 20 \
        2>&1 | tail -3 | tee -a "$out/python.txt" || echo "python $fam $run: FAILED" | tee -a "$out/python.txt"
    done
  done
else
  echo "skipped: no carried wheel (target/wheels) or no torch/torchvision/numpy in python3" | tee -a "$out/python.txt"
fi
echo "results in $out"
