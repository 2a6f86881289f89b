"""mk/run-tests.sh, `make test`'s runner: the suite in two pytest processes (the node tests and the
rest, split by tests/conftest.py on FISSURE_TEST_PART) and one exit status for both."""

from __future__ import annotations

import os
import subprocess
import sys

from ..conftest import REPO_ROOT

RUNNER = REPO_ROOT / "mk" / "run-tests.sh"


def _run(tmp_path, *args: str) -> subprocess.CompletedProcess:
    # in a scratch folder: its .fissure/test-node.log is the node part's
    env = {k: v for k, v in os.environ.items() if k != "FISSURE_TEST_PART"}
    return subprocess.run(["bash", str(RUNNER), sys.executable, "-p", "no:cacheprovider", "-q", *args],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)


def test_the_two_parts_split_the_suite_and_a_pass_is_zero(tmp_path):
    # tests/conftest.py splits by the `node` fixture: none of these use it, so the node part
    # selects nothing (5), which alone is not a failure
    proc = _run(tmp_path, str(REPO_ROOT / "tests" / "core" / "test_settings.py"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "exit status: other tests 0, node tests 5" in proc.stdout, proc.stdout
    log = (tmp_path / ".fissure" / "test-node.log").read_text()
    assert "deselected" in log and log in proc.stdout  # the node part's output, printed at the end


def test_a_failing_part_fails_the_run_and_nothing_selected_is_5(tmp_path):
    failing = tmp_path / "test_fails.py"
    failing.write_text("def test_fails():\n    assert 1 == 2\n")
    # outside tests/ no split applies: both parts run the failing test
    proc = _run(tmp_path, str(failing))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "exit status: other tests 1, node tests 1" in proc.stdout, proc.stdout
    proc = _run(tmp_path, str(REPO_ROOT / "tests" / "core" / "test_settings.py"), "-k", "no_such_test_name")
    assert proc.returncode == 5, proc.stdout + proc.stderr


def test_a_bad_part_name_is_a_usage_error(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "--collect-only",
                           str(REPO_ROOT / "tests" / "core" / "test_settings.py")],
                          cwd=REPO_ROOT, env={**os.environ, "FISSURE_TEST_PART": "nodes"},
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 4, proc.stdout + proc.stderr
    assert "FISSURE_TEST_PART='nodes': use node, rest or leave it unset" in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
