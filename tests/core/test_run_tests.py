"""mk/run-tests.sh, `make test`'s runner: the suite in two pytest processes (the node's tests and
those marked `beside`, and the rest, split by tests/conftest.py on FISSURE_TEST_PART) and one exit
status for both."""

from __future__ import annotations

import os
import subprocess
import sys

from ..conftest import REPO_ROOT

RUNNER = REPO_ROOT / "mk" / "run-tests.sh"


def _run(tmp_path, *args: str) -> subprocess.CompletedProcess:
    # in a scratch folder: its .fissure/test-beside.log is the second process's
    env = {k: v for k, v in os.environ.items() if k != "FISSURE_TEST_PART"}
    return subprocess.run(["bash", str(RUNNER), sys.executable, "-p", "no:cacheprovider", "-q", *args],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)


def test_the_two_parts_split_the_suite_and_a_pass_is_zero(tmp_path):
    # tests/conftest.py splits by the `node` fixture and the `beside` marker: none of these has
    # either, so the second process selects nothing (5), which alone is not a failure
    proc = _run(tmp_path, str(REPO_ROOT / "tests" / "core" / "test_settings.py"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "exit status: other tests 0, tests beside 5" in proc.stdout, proc.stdout
    log = (tmp_path / ".fissure" / "test-beside.log").read_text()
    assert "deselected" in log and log in proc.stdout  # the second process's output, printed at the end


def test_a_failing_part_fails_the_run_and_nothing_selected_is_5(tmp_path):
    failing = tmp_path / "test_fails.py"
    failing.write_text("def test_fails():\n    assert 1 == 2\n")
    # outside tests/ no split applies: both parts run the failing test
    proc = _run(tmp_path, str(failing))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "exit status: other tests 1, tests beside 1" in proc.stdout, proc.stdout
    proc = _run(tmp_path, str(REPO_ROOT / "tests" / "core" / "test_settings.py"), "-k", "no_such_test_name")
    assert proc.returncode == 5, proc.stdout + proc.stderr


def test_a_bad_part_name_is_a_usage_error(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "--collect-only",
                           str(REPO_ROOT / "tests" / "core" / "test_settings.py")],
                          cwd=REPO_ROOT, env={**os.environ, "FISSURE_TEST_PART": "nodes"},
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 4, proc.stdout + proc.stderr
    assert "FISSURE_TEST_PART='nodes': use beside, rest or leave it unset" in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr


def test_tests_marked_beside_run_in_the_second_process():
    """The `beside` marker moves a test that mostly waits (here the promotion e2e) out of the
    foreground part; an unmarked test stays there."""
    files = [str(REPO_ROOT / "tests" / "promotion" / "test_promotion_e2e.py"),
             str(REPO_ROOT / "tests" / "core" / "test_settings.py")]

    def collected(part: str) -> set[str]:
        proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "--collect-only", *files],
                              cwd=REPO_ROOT, env={**os.environ, "FISSURE_TEST_PART": part},
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return {line.split("::")[0].rsplit("/", 1)[-1] for line in proc.stdout.splitlines() if "::" in line}

    assert collected("beside") == {"test_promotion_e2e.py"}
    assert "test_promotion_e2e.py" not in collected("rest") and "test_settings.py" in collected("rest")
