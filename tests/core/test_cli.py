import re
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


def _help_summary(out: str) -> str:
    """The first paragraph of a `--help` text (after its Usage line), on one line."""
    paragraphs = out.split("\n\n")
    assert paragraphs[0].startswith("Usage:"), out
    return " ".join(paragraphs[1].split())


def _top_level_summaries(out: str) -> dict[str, str]:
    """`fissure --help`'s Commands section: name -> its one-line help (wrapped lines joined)."""
    rows: dict[str, list[str]] = {}
    section = out.split("\nCommands:\n", 1)[1]
    for line in section.splitlines():
        if not line.strip():
            break
        indent = len(line) - len(line.lstrip())
        if indent == 2:
            name, _, text = line.strip().partition(" ")
            rows[name] = [text]
        else:
            rows[name].append(line)
    return {name: " ".join(" ".join(parts).split()) for name, parts in rows.items()}


def test_top_level_summaries_are_the_commands_own_help(capsys):
    from fissure.cli import LazyGroup

    assert main(["--help"]) == 0
    listed = _top_level_summaries(capsys.readouterr().out)
    available = [name for name in COMMANDS if LazyGroup._available(name)]
    assert sorted(listed) == sorted(available)
    for name in available:
        assert main([name, "--help"]) == 0, name
        assert listed[name] == _help_summary(capsys.readouterr().out), name


def test_top_level_help_imports_no_command_module():
    code = ("import sys\nfrom fissure.cli import main\nmain(['--help'])\n"
            "print(sorted(m for m in sys.modules if m.startswith('fissure.cli.') or m.split('.')[0] == 'pydantic'))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.parametrize("path", [["serve"], ["up"], ["predict"], ["api"], ["token", "create"], ["token", "list"],
                                  ["token", "revoke"], ["feedback", "export"], ["feedback", "gc"]])
def test_every_option_is_described(path):
    import importlib

    import click

    module, attr = COMMANDS[path[0]][:2]
    cmd = getattr(importlib.import_module(module), attr)
    for sub in path[1:]:
        cmd = cmd.commands[sub]
    bare = [p.name for p in cmd.params if isinstance(p, click.Option) and not p.help and p.name != "help"]
    assert bare == [], path


def test_api_help_names_the_environment_it_needs(capsys):
    from fissure.settings import Settings

    assert main(["api", "--help"]) == 0
    out = capsys.readouterr().out
    assert "Environment:" in out
    fields = Settings.model_fields
    for var, default in (("FISSURE_INFERENCE_URL", fields["inference_url"].default),
                         ("FISSURE_HOME", fields["home"].default),
                         ("FISSURE_RETRAIN_COMMAND", fields["retrain_command"].default)):
        entry = re.split(r"\n {2,4}(?=\S)", out[out.index(var):])[0]  # up to the next variable
        assert f"[default: {default}]" in " ".join(entry.split()), var
