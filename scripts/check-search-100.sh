#!/usr/bin/env bash
# Runs the category search for 100 classes and compares every CSV, byte for byte, with the published
# FractalDB-1k classes 00000..00099 in tests/fixtures/reference/categories/ (about a minute on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
ref=${REFERENCE:-tests/fixtures/reference}
cargo build --release --quiet
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
./target/release/fractaldb search --categories 100 --no-previews --out "$tmp" -q
fail=0
for f in "$ref"/categories/*.csv; do
  n=$(basename "$f")
  cmp -s "$f" "$tmp/csv_rate0.2_category100/$n" || { echo "DIFFERS: $n"; fail=1; }
done
[ $fail = 0 ] && echo "all $(ls "$ref"/categories/*.csv | wc -l) published classes reproduced byte for byte"
exit $fail
