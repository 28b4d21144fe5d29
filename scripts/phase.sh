#!/usr/bin/env bash
# Run one phase of `make test` / `.ci/run` and say how long it took, whatever its outcome:
#   scripts/phase.sh NAME COMMAND [ARGS...]
# prints "== NAME: 12.3 s" (or "== NAME: 12.3 s, exit 2") on stderr and exits with the command's
# status, so a slow or failing phase is named in the log without reading timestamps.
set -u
name=$1
shift
start=$(date +%s.%N)
"$@"
status=$?
end=$(date +%s.%N)
seconds=$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.1f", b - a }')
if [ "$status" -eq 0 ]; then
  echo "== $name: $seconds s" >&2
else
  echo "== $name: $seconds s, exit $status" >&2
fi
exit "$status"
