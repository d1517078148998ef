#!/usr/bin/env bash
# Builds fractaldb and makes a tiny FractalDB in seconds: search 3 categories (the first 3 published
# classes of FractalDB-1k), render them at 128x128 with 2 patch instances, as folders and as shards.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-demo}
echo "building fractaldb (about 3 minutes the first time on 2 cores, seconds after)..." >&2
cargo build --release
bin=./target/release/fractaldb
$bin search --categories 3 --out "$out"
$bin render --load-root "$out/csv_rate0.2_category3" --out "$out/FractalDB-3" \
  --image-size-x 128 --image-size-y 128 --iteration 20000 --instance 2
$bin render --load-root "$out/csv_rate0.2_category3" --out "$out/FractalDB-3-wds" --format wds \
  --image-size-x 128 --image-size-y 128 --iteration 20000 --instance 2 --samples-per-shard 200 --resume
if python3 -c "import PIL" 2>/dev/null; then
  python3 scripts/contact-sheet.py --bin "$bin" --classes 3 --size 128 --iteration 20000 --out "$out/contact-sheet.png"
else
  echo "skipped the contact sheet ($out/contact-sheet.png): it needs Pillow (pip install pillow)" >&2
fi
echo
echo "class CSVs:  $out/csv_rate0.2_category3/"
echo "previews:    $out/rate0.2_category3/"
echo "images:      $out/FractalDB-3/00000/00000_02_count_0_flip0.png ..."
echo "shards:      $out/FractalDB-3-wds/fractaldb-000000.tar ... (+ fractaldb-wids.json)"
[ -f "$out/contact-sheet.png" ] && echo "overview:    $out/contact-sheet.png (the draw modes, the flips, RCDB)"
echo "next:        docs/train.md (load it in PyTorch), docs/python.md (no files at all)"
