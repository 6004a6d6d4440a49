#!/usr/bin/env bash
# The whole suite in two lanes on one host: the slow groups that mostly wait (the Ray cluster in
# its network namespaces, the browser) run beside everything else, each a pytest session of its
# own, so `make test` takes the longer lane's time, not the sum. The side lane then runs the
# petals suite a second time with a warm pool (WARM_POOL) in every service it starts. With
# arguments, one session runs exactly what they select.
set -uo pipefail
PY=${PY:-.venv/bin/python}
SIDE=(tests/test_fleet_ray.py tests/test_dashboard.py)
# Every learn-cycle path through the service: training, hostile programs, caps, robust rounds.
WARM=(tests/test_petals.py tests/test_byom_programs.py tests/test_byom_models.py tests/test_training_caps.py
      tests/test_training_deadlock.py tests/test_robust_federation.py)
if [ "$#" -gt 0 ]; then
  exec "$PY" -m pytest "$@"
fi
log=$(mktemp /tmp/wondercraft-side-lane.XXXXXX)
(
  "$PY" -m pytest "${SIDE[@]}"
  side_rc=$?
  echo "==== the petals suite again, with a warm pool ===="
  WONDERCRAFT_TEST_WARM_POOL=numpy=4 "$PY" -m pytest "${WARM[@]}"
  warm_rc=$?
  [ "$side_rc" -eq 0 ] && [ "$warm_rc" -eq 0 ]
) >"$log" 2>&1 &
side=$!
ignores=()
for path in "${SIDE[@]}"; do ignores+=(--ignore="$path"); done
"$PY" -m pytest "${ignores[@]}"
main_rc=$?
wait "$side"
side_rc=$?
echo "==== the side lane: ${SIDE[*]}, then ${WARM[*]} with a warm pool ===="
cat "$log"
rm -f "$log"
echo "main lane exit $main_rc, side lane exit $side_rc"
[ "$main_rc" -eq 0 ] && [ "$side_rc" -eq 0 ]
