"""The ``gla`` command as users run it: console script, exit codes, one-line errors, --debug, --help."""
from __future__ import annotations

import subprocess
import sys

from pathlib import Path

import numpy as np
import pytest
from synth import biased_logits, write_logits_file

from glacli.cli.app import app
from glacli.cli.main import COMMAND_MODULES, main, register_commands

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


@pytest.fixture(scope="module")
def small_files(tmp_path_factory) -> dict[str, Path]:
    """A labelled logits file, its prior and an evaluate result, for the commands run without torch."""
    folder = tmp_path_factory.mktemp("no_torch")
    z, y, _ = biased_logits(30, 4, seed=22)
    logits = write_logits_file(folder / "zs.h5", z, y)
    assert main(["estimate-prior", str(logits), "-o", str(folder / "q.h5"), "--device", "cpu"]) == 0
    assert main(["evaluate", str(logits), "--json-out", str(folder / "r.json"), "--device", "cpu"]) == 0
    np.save(folder / "z.npy", z)
    return {"dir": folder, "zs": logits, "q": folder / "q.h5", "r": folder / "r.json", "npy": folder / "z.npy"}


NO_TORCH_RUNS = [
    ["--help"],
    *[[name, "--help"] for name in COMMAND_MODULES if name != "fit"],
    ["estimate-prior", "{zs}", "-o", "{dir}/q2.h5", "--device", "cpu"],
    ["calibrate", "{zs}", "--val", "{zs}", "-o", "{dir}/cal.h5"],
    ["combine", "--zeroshot", "{zs}", "--prior", "{q}", "-o", "{dir}/debiased.h5"],
    ["evaluate", "{zs}", "--bootstrap", "10", "--device", "cpu", "--json"],
    ["report", "{r}", "-o", "{dir}/r.md"],
    ["import", "{npy}", "--kind", "logits", "-o", "{dir}/imported.h5"],
    ["info", "{q}", "{zs}"],
]
"""Every command's help, and the commands that need no model nor tensor, run on a CPU."""


@pytest.mark.parametrize("args", NO_TORCH_RUNS, ids=" ".join)
def test_no_command_imports_torch_before_it_needs_a_model_or_a_tensor(args, small_files):
    args = [a.format(**small_files) for a in args]
    code = (f"import sys; from glacli.cli.main import main; code = main({args!r}); "
            "print('exit', code, 'torch' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.stdout.strip().splitlines()[-1] == "exit 0 False", (r.stdout[-300:], r.stderr[-500:])


def test_listing_the_commands_imports_none_of_them():
    code = ("import sys; from glacli.cli.main import main; main(['--help']); "
            "print([m for m in ('torch', 'h5py', 'glacli.cli.commands.combine') if m in sys.modules])")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.stdout.strip().endswith("[]"), r.stdout[-200:]
