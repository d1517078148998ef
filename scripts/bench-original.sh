#!/usr/bin/env bash
# Times the ORIGINAL Python generator and fractaldb on the same classes and settings, so the report can
# show our ratio against the original. Nothing of the original is kept in this repository: pass the path
# of your own checkout of hirokatsukataoka16/FractalDB-Pretrained-ResNet-PyTorch (it needs numpy < 1.24,
# Pillow; run it in the Python environment it works in: PYTHON=/path/to/python).
#
#   scripts/bench-original.sh /path/to/FractalDB-Pretrained-ResNet-PyTorch [classes=2] [instance=1]
set -euo pipefail
orig=${1:?usage: $0 ORIGINAL_CHECKOUT [classes] [instance]}
classes=${2:-2}
instance=${3:-1}
py=${PYTHON:-python3}
cd "$(dirname "$0")/.."
[ -f "$orig/fractal_renderer/make_fractaldb.py" ] || { echo "$orig: no fractal_renderer/make_fractaldb.py"; exit 2; }
cargo build --release --quiet
bin=$PWD/target/release/fractaldb
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
"$bin" search -q --categories "$classes" --out "$work"      # byte-identical to the original's classes
load="$work/csv_rate0.2_category$classes"
args=(--image_size_x=362 --image_size_y=362 --iteration=200000 --draw_type=patch_gray --instance="$instance")
weights="$orig/fractal_renderer/weights/weights_0.4.csv"

cpu_time() { # prints "wall_s cpu_s" of a command (children included)
  local t0 t1 c0 c1 me=$BASHPID   # this (sub)shell: its waited-for children's CPU time grows
  t0=$(date +%s.%N); c0=$(awk '{print $14+$15+$16+$17}' "/proc/$me/stat")
  "$@" >/dev/null 2>&1
  t1=$(date +%s.%N); c1=$(awk '{print $14+$15+$16+$17}' "/proc/$me/stat")
  echo "$(echo "$t1 - $t0" | bc -l) $(echo "($c1 - $c0) / $(getconf CLK_TCK)" | bc -l)"
}

mkdir -p "$work/orig-out"
read -r ow oc < <(cd "$orig/fractal_renderer" && cpu_time "$py" make_fractaldb.py --load_root="$load" \
  --save_root="$work/orig-out/FractalDB" "${args[@]}" --weight_csv="$weights")
on=$(find "$work/orig-out" -name '*.png' | wc -l)
read -r fw fc < <(cpu_time "$bin" render -q --backend cpu -j 1 --encoders 1 --load_root="$load" \
  --save_root="$work/ours-1" "${args[@]}" --weight_csv="$weights")
read -r aw ac < <(cpu_time "$bin" render -q --backend cpu --load_root="$load" --save_root="$work/ours-all" \
  "${args[@]}" --weight_csv="$weights")
fn=$(find "$work/ours-1" -name '*.png' | wc -l)
[ "$on" = "$fn" ] || echo "WARNING: the original wrote $on images, fractaldb $fn"
awk -v on="$on" -v ow="$ow" -v oc="$oc" -v fn="$fn" -v fw="$fw" -v fc="$fc" -v aw="$aw" -v ac="$ac" 'BEGIN {
  printf "%-28s %8s %10s %10s %12s\n", "run", "images", "wall s", "CPU s", "img/CPU-s";
  printf "%-28s %8d %10.2f %10.2f %12.2f\n", "original (Python)", on, ow, oc, on/oc;
  printf "%-28s %8d %10.2f %10.2f %12.2f\n", "fractaldb cpu, 1 thread", fn, fw, fc, fn/(fc>0?fc:0.01);
  printf "%-28s %8d %10.2f %10.2f %12.2f\n", "fractaldb cpu, all threads", fn, aw, ac, fn/(ac>0?ac:0.01);
  printf "ratio per core: %.0fx   wall (all threads vs original): %.0fx\n", (fn/(fc>0?fc:0.01))/(on/oc), ow/aw;
}'
