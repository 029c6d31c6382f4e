#!/usr/bin/env bash
# Runs a command with every core kept busy by a CPU hog, the way a loaded
# CI box or a laptop compiling something else would be. A test that passes
# only on an idle machine is a bug; this is how to find it:
#
#   scripts/under-load.sh ./test.sh                 # once
#   for i in 1 2 3; do scripts/under-load.sh ./test.sh || break; done
#
# HOGS overrides the number of hogs (default: one per core).
set -euo pipefail
if [ "$#" -eq 0 ]; then
  echo "usage: $0 COMMAND [ARGS...]" >&2
  exit 2
fi
hogs=${HOGS:-$(nproc)}
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT
for _ in $(seq "$hogs"); do
  # A busy loop at normal priority: it competes for every core.
  (while :; do :; done) &
  pids+=("$!")
done
echo "under-load: $hogs CPU hog(s) running beside: $*" >&2
"$@"
