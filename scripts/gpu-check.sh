#!/usr/bin/env bash
# One prepared check for an NVIDIA machine (run from the repository root, with the release binary built
# elsewhere and carried along, plus .gl/ from scripts/fetch-gl-debs.sh):
#   1. unpack the glvnd EGL loader if the machine lacks libEGL.so.1, point glvnd at the NVIDIA vendor JSON;
#   2. `fractaldb devices`;
#   3. parity: GPU search == CPU search, and GL renders (both raster paths) == CPU renders, byte for byte;
#   4. throughput: `fractaldb bench --backend cpu,gl` at FractalDB-1k settings (JSON + SVG).
# Results go to $OUT (or ./gpu-check-out). Works on Mesa too (then the GL figures are llvmpipe's).
set -euo pipefail
out=${OUT:-gpu-check-out}
mkdir -p "$out"
bin=${FRACTALDB_BIN:-./target/release/fractaldb}
classes=${GPU_CHECK_CLASSES:-8}
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
common=(render -q --load-root "$load" --instance 2 --image-size-x 362 --image-size-y 362 --iteration 200000)
"$bin" "${common[@]}" --backend cpu --out "$work/r-cpu"
for r in compute points; do
  "$bin" "${common[@]}" --backend gl --raster "$r" --out "$work/r-gl-$r"
  if diff -r -q "$work/r-cpu" "$work/r-gl-$r" >/dev/null; then
    echo "render ($r): GPU == CPU, $(find "$work/r-cpu" -name '*.png' | wc -l) images identical" | tee -a "$out/parity.txt"
  else
    n=$(diff -r -q "$work/r-cpu" "$work/r-gl-$r" | wc -l)
    echo "render ($r): $n files DIFFER" | tee -a "$out/parity.txt"
  fi
done

echo "== throughput"
"$bin" bench --backend cpu,gl --classes "$classes" --json --plot "$out/bench.svg" > "$out/bench.json"
"$bin" bench --backend gl --classes "$classes" --format wds --repeat 2 | tee "$out/bench.txt"
echo "results in $out"
