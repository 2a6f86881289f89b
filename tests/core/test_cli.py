import subprocess
import sys

import pytest

from fissure.cli import COMMANDS, main


def test_help_lists_available_commands(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "Usage: fissure" in out


def test_every_available_command_has_help(capsys):
    from fissure.cli import LazyGroup

    for name in COMMANDS:
        if LazyGroup._available(name):
            assert main([name, "--help"]) == 0, name
            assert "Usage:" in capsys.readouterr().out


def test_unknown_command_is_one_line_and_nonzero():
    proc = subprocess.run([sys.executable, "-m", "fissure", "frobnicate"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "No such command" in proc.stderr and "Traceback" not in proc.stderr


def _run(*args, env=None, code=""):
    """`fissure ARGS` in a fresh interpreter (after CODE), for the real exit code and stderr."""
    import os

    script = f"import sys\n{code}\nfrom fissure.cli import main\nsys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})


def _one_line(proc, code: int, message: str) -> None:
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert [line for line in lines if line.startswith(("fissure: error:", "Error:"))] == lines[-1:], lines
    assert message in lines[-1], lines


def test_a_bad_flag_is_a_usage_error():
    _one_line(_run("data", "synth", "--task", "segment", "--bogus"), 2, "No such option '--bogus'")


def test_a_bad_fissure_setting_is_a_usage_error(tmp_path):
    proc = _run("data", "synth", "--task", "segment", "--out", str(tmp_path / "o"), env={"FISSURE_MAX_ITEMS": "abc"})
    _one_line(proc, 2, "FISSURE_MAX_ITEMS='abc': Input should be a valid integer")
    assert not (tmp_path / "o").exists()  # refused before any work


def test_help_works_with_a_bad_setting():
    proc = _run("data", "synth", "--help", env={"FISSURE_MAX_ITEMS": "abc"})
    assert proc.returncode == 0 and "Usage: fissure data synth" in proc.stdout


def test_a_runtime_failure_exits_1(tmp_path):
    proc = _run("evaluate", "--task", "segment", "--model", str(tmp_path / "no-model"), "--data", str(tmp_path),
                "--out", str(tmp_path / "x.json"))
    _one_line(proc, 1, "not found")


@pytest.mark.parametrize("args", [["serve", "--model-store", "."], ["predict", "--protocol", "grpc", "--model", "m"]])
def test_a_missing_extra_is_one_line(args, tmp_path):
    from fissure.cli import EXTRAS

    from PIL import Image

    image = tmp_path / "x.png"
    Image.new("RGB", (32, 32)).save(image)
    if args[0] == "predict":
        args = [args[0], str(image), *args[1:]]
    # None in sys.modules is how Python marks a module as absent: `import kserve` then fails
    # with ModuleNotFoundError, as in an install without the serve extra.
    proc = _run(*args, code=f"sys.modules.update(dict.fromkeys({sorted(EXTRAS)!r}))")
    cmd = args[0]
    _one_line(proc, 1, f"fissure {cmd} needs the serve extra: pip install 'fissure[serve]'")
