#!/usr/bin/env bash
# `make test`'s runner: the suite in two pytest processes side by side. The tests on the real
# node (those using the `node` fixture, tests/cluster: minutes of image imports and pods
# starting) and those marked `beside` (a canary's bakes, Prometheus' scrapes), which mostly wait,
# run in the background, their output in .fissure/test-beside.log, printed when both parts are
# done; every other test runs in the foreground, on the terminal.
# tests/conftest.py splits the collected tests by FISSURE_TEST_PART. Exit status: the first
# failing part's; pytest's 5 ("no tests selected", e.g. a -k that picks only one part) counts as
# a pass for a part unless both parts selected nothing.
#   mk/run-tests.sh PYTHON [PYTEST_ARGS...]
set -uo pipefail
python=$1; shift
mkdir -p .fissure
log=.fissure/test-beside.log
# a background job starts with SIGINT ignored; pytest needs it to tear the node down on Ctrl-C
pytest_main='import signal, sys, pytest; signal.signal(signal.SIGINT, signal.default_int_handler); sys.exit(pytest.main(sys.argv[1:]))'
echo ">> the node's tests and those marked beside run in a second process (log: $log, printed at the end)"
FISSURE_TEST_PART=beside "$python" -c "$pytest_main" "$@" > "$log" 2>&1 &
beside_pid=$!
trap 'kill -INT "$beside_pid" 2>/dev/null' INT TERM
FISSURE_TEST_PART=rest "$python" -m pytest "$@"; rest=$?
while :; do
  wait "$beside_pid"; beside=$?
  # over 128 while the job still runs: the wait was cut short by a trapped signal, not the job
  if [ "$beside" -gt 128 ] && kill -0 "$beside_pid" 2>/dev/null; then continue; fi
  break
done
echo; echo ">> the node's tests and those marked beside ($log):"; cat "$log"
echo ">> exit status: other tests $rest, tests beside $beside"
if [ "$rest" = 5 ] && [ "$beside" = 5 ]; then exit 5; fi
for rc in "$rest" "$beside"; do
  if [ "$rc" != 0 ] && [ "$rc" != 5 ]; then exit "$rc"; fi
done
exit 0
