#!/usr/bin/env bash
# `make test`'s runner: the suite in two pytest processes side by side. The tests on the real
# node (those using the `node` fixture, tests/cluster: minutes of image imports and pods
# starting, mostly waiting) run in the background, their output in .fissure/test-node.log,
# printed when both parts are done; every other test runs in the foreground, on the terminal.
# tests/conftest.py splits the collected tests by FISSURE_TEST_PART. Exit status: the first
# failing part's; pytest's 5 ("no tests selected", e.g. a -k that picks only one part) counts as
# a pass for a part unless both parts selected nothing.
#   mk/run-tests.sh PYTHON [PYTEST_ARGS...]
set -uo pipefail
python=$1; shift
mkdir -p .fissure
log=.fissure/test-node.log
# a background job starts with SIGINT ignored; pytest needs it to tear the node down on Ctrl-C
pytest_main='import signal, sys, pytest; signal.signal(signal.SIGINT, signal.default_int_handler); sys.exit(pytest.main(sys.argv[1:]))'
echo ">> the tests on the single-node cluster run beside the others (log: $log, printed at the end)"
FISSURE_TEST_PART=node "$python" -c "$pytest_main" "$@" > "$log" 2>&1 &
node_pid=$!
trap 'kill -INT "$node_pid" 2>/dev/null' INT TERM
FISSURE_TEST_PART=rest "$python" -m pytest "$@"; rest=$?
while :; do
  wait "$node_pid"; node=$?
  # over 128 while the job still runs: the wait was cut short by a trapped signal, not the job
  if [ "$node" -gt 128 ] && kill -0 "$node_pid" 2>/dev/null; then continue; fi
  break
done
echo; echo ">> the tests on the single-node cluster ($log):"; cat "$log"
echo ">> exit status: other tests $rest, node tests $node"
if [ "$rest" = 5 ] && [ "$node" = 5 ]; then exit 5; fi
for rc in "$rest" "$node"; do
  if [ "$rc" != 0 ] && [ "$rc" != 5 ]; then exit "$rc"; fi
done
exit 0
