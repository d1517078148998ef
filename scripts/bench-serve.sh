#!/usr/bin/env bash
# Served images/s and shard latency (p50/p99) against `render --format wds` on the same machine and
# settings: FractalDB-1k settings, CLASSES published classes (default 10) in 100 shards (1k's ratio).
# Every served shard is also compared with the rendered file, byte for byte.
#   scripts/bench-serve.sh [CLASSES] [CLIENTS]        (BACKEND=cpu|gl|auto, default auto)
set -euo pipefail
cd "$(dirname "$0")/.."
classes=${1:-10}
clients=${2:-2}
backend=${BACKEND:-auto}
bin=${FRACTALDB_BIN:-./target/release/fractaldb}
[ -x "$bin" ] || cargo build --release --quiet
work=$(mktemp -d)
trap 'kill $(cat "$work/pid" 2>/dev/null) 2>/dev/null || true; rm -rf "$work"' EXIT
"$bin" search -q --categories "$classes" --no-previews --out "$work/s"
load="$work/s/csv_rate0.2_category$classes"
total=$((classes * 25 * 10 * 4))
per=$(( (total + 99) / 100 ))
flags=(--load-root "$load" --backend "$backend" --samples-per-shard "$per")

t0=$(date +%s.%N)
"$bin" render -q "${flags[@]}" --format wds --out "$work/disk"
t1=$(date +%s.%N)
render_s=$(echo "$t1 - $t0" | bc -l)
shards=$(ls "$work/disk"/fractaldb-*.tar | wc -l)

"$bin" serve "${flags[@]}" --listen 127.0.0.1:0 --prefetch "${PREFETCH:-4}" 2> "$work/serve.log" &
echo $! > "$work/pid"
for _ in $(seq 100); do grep -q 'listening on' "$work/serve.log" && break; sleep 0.1; done
base=$(grep -o 'http://[0-9.:]*' "$work/serve.log" | head -1)
fetch() { # client index: fetches shards k, k+clients, ...
  for ((s = $1; s < shards; s += clients)); do
    name=$(printf 'fractaldb-%06d.tar' "$s")
    curl -s -o "$work/got-$1.tar" -w "%{time_total}\n" "$base/$name" >> "$work/lat-$1.txt"
    cmp -s "$work/got-$1.tar" "$work/disk/$name" || { echo "$name DIFFERS" >&2; exit 1; }
  done
}
t0=$(date +%s.%N)
pids=()
for ((c = 0; c < clients; c++)); do fetch "$c" & pids+=($!); done
for p in "${pids[@]}"; do wait "$p"; done
t1=$(date +%s.%N)
serve_s=$(echo "$t1 - $t0" | bc -l)
sort -g "$work"/lat-*.txt > "$work/lat.txt"
n=$(wc -l < "$work/lat.txt")
p50=$(sed -n "$(( (n + 1) / 2 ))p" "$work/lat.txt")
p99=$(sed -n "$(( (n * 99 + 99) / 100 ))p" "$work/lat.txt")
rss=$(grep VmHWM "/proc/$(cat "$work/pid")/status" | awk '{print $2}')
kill -TERM "$(cat "$work/pid")"; wait "$(cat "$work/pid")" || true
printf '{"classes": %d, "images": %d, "shards": %d, "clients": %d, "backend": "%s",\n' "$classes" "$total" "$shards" "$clients" "$backend"
printf ' "render_s": %.2f, "render_images_per_s": %.0f,\n' "$render_s" "$(echo "$total / $render_s" | bc -l)"
printf ' "serve_s": %.2f, "served_images_per_s": %.0f, "served_over_render": %.2f,\n' "$serve_s" "$(echo "$total / $serve_s" | bc -l)" "$(echo "$render_s / $serve_s" | bc -l)"
printf ' "shard_latency_p50_s": %s, "shard_latency_p99_s": %s, "server_peak_rss_mb": %d}\n' "$p50" "$p99" "$((rss / 1024))"
