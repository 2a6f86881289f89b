import subprocess
import sys

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
