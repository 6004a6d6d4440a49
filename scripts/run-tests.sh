#!/usr/bin/env bash
# The whole suite in two lanes on one host: the slow groups that mostly wait (the Ray cluster in
# its network namespaces, the browser) run beside everything else, each a pytest session of its
# own, so `make test` takes the longer lane's time, not the sum. With arguments, one session
# runs exactly what they select.
set -uo pipefail
PY=${PY:-.venv/bin/python}
SIDE=(tests/test_fleet_ray.py tests/test_dashboard.py)
if [ "$#" -gt 0 ]; then
  exec "$PY" -m pytest "$@"
fi
log=$(mktemp /tmp/wondercraft-side-lane.XXXXXX)
"$PY" -m pytest "${SIDE[@]}" >"$log" 2>&1 &
side=$!
ignores=()
for path in "${SIDE[@]}"; do ignores+=(--ignore="$path"); done
"$PY" -m pytest "${ignores[@]}"
main_rc=$?
wait "$side"
side_rc=$?
echo "==== the side lane: ${SIDE[*]} ===="
cat "$log"
rm -f "$log"
echo "main lane exit $main_rc, side lane exit $side_rc"
[ "$main_rc" -eq 0 ] && [ "$side_rc" -eq 0 ]
