#!/usr/bin/env bash
# Prints the slowest ten test binaries of a `cargo test` log against their time budget, and the total.
# The budgets keep .ci/run under ~20 minutes on a loaded 2-core machine: a binary over its budget is
# reported here (never failed: times vary with the machine's load) and should be made cheaper.
# Usage: scripts/test-times.sh LOG
set -euo pipefail
log=${1:?usage: scripts/test-times.sh LOG}
# Seconds per binary; unlisted binaries get the default. All binaries together: TOTAL.
DEFAULT=120
TOTAL=900
budget() {
  case "$1" in
    tests/python_package.rs) echo 300 ;; # builds the wheel, then the whole Python suite
    *) echo "$DEFAULT" ;;
  esac
}
# Pairs "seconds name": the name from each `Running` line, the seconds from its `test result` line.
pairs=$(awk '
  /^ *Running / { name = $2; if (name == "unittests") name = $3 }
  /^test result: / && name != "" {
    for (i = 1; i <= NF; i++) if ($i == "in") { s = $(i + 1); sub(/s$/, "", s) }
    printf "%s %s\n", s, name; name = ""
  }' "$log")
[ -n "$pairs" ] || { echo "test-times: no test binary finished in $log"; exit 0; }
echo
echo "Slowest test binaries (seconds, budget; each binary's budget is $DEFAULT s unless listed in scripts/test-times.sh):"
sort -rn <<<"$pairs" | head -10 | while read -r s name; do
  b=$(budget "$name")
  over=$(awk -v s="$s" -v b="$b" 'BEGIN { if (s > b) print "  OVER BUDGET" }')
  printf '%8.1f  %4d  %s%s\n' "$s" "$b" "$name" "$over"
done
awk -v T="$TOTAL" '{ t += $1; n++ } END {
  printf "%8.1f        all %d binaries (budget %d s)%s\n", t, n, T, (t > T ? "  OVER BUDGET" : "") }' <<<"$pairs"
