"""The ``gla`` command as users run it: console script, exit codes, one-line errors, --debug, --help."""
from __future__ import annotations

import subprocess
import sys

import pytest
from synth import biased_logits, write_logits_file

from glacli.cli.app import app
from glacli.cli.main import COMMAND_MODULES, register_commands

GLA = [sys.executable, "-m", "glacli"]


def run(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run([*GLA, *map(str, args)], capture_output=True, text=True, timeout=120)


def test_user_error_is_one_line_exit_2_and_debug_shows_the_traceback(tmp_path):
    r = run("estimate-prior", tmp_path / "missing.h5", "-o", tmp_path / "q.h5")
    assert r.returncode == 2
    assert r.stderr.strip() == f"gla: error: {tmp_path / 'missing.h5'}: no such file"
    r = run("estimate-prior", tmp_path / "missing.h5", "-o", tmp_path / "q.h5", "--debug")
    assert r.returncode == 2 and "Traceback" in r.stderr and r.stderr.strip().endswith("no such file")


def test_usage_errors_are_one_line_too(tmp_path):
    r = run("estimate-prior", tmp_path / "x.h5")
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gla: error:") and "--output" in lines[0]
    r = run("no-such-command")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1


def test_json_goes_to_stdout_alone(tmp_path):
    z, y, _ = biased_logits(10, 3, seed=0)
    path = write_logits_file(tmp_path / "zs.h5", z, y)
    r = run("estimate-prior", path, "-o", tmp_path / "q.h5", "--json")
    assert r.returncode == 0, r.stderr
    import json
    assert json.loads(r.stdout)["n_classes"] == 3


def registered_commands() -> list[str]:
    register_commands()
    return sorted(c.name for c in app.registered_commands)


@pytest.mark.parametrize("command", registered_commands())
def test_every_command_has_help_with_an_example(gla, command):
    r = gla(command, "--help")
    assert r.code == 0
    assert "Example" in r.out, f"gla {command} --help shows no example"


def test_top_level_help_lists_the_commands(gla):
    r = gla("--help")
    assert r.code == 0
    for name in COMMAND_MODULES:
        assert name in r.out
    assert sorted(COMMAND_MODULES) == registered_commands()


@pytest.mark.parametrize(("args", "unloaded"), [
    (["--help"], ["torch", "h5py", "glacli.cli.commands.combine"]),  # listing the commands imports none of them
    (["combine", "--help"], ["torch"]),
    (["logits", "--help"], ["torch"]),            # numpy applies a head; the recipes call it per split
    (["estimate-target", "--help"], ["torch"]),
])
def test_commands_that_need_no_torch_start_without_it(args, unloaded):
    code = (f"import sys; from glacli.cli.main import main; main({args!r}); "
            f"print([m for m in {unloaded!r} if m in sys.modules])")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.stdout.strip().endswith("[]"), r.stdout[-200:]
