"""The ``gla`` command as users run it: console script, exit codes, one-line errors, --debug, --help."""
from __future__ import annotations

import inspect
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_one_line_error
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


# ------------------------------------------------------------------ what a user reads


def test_version(tmp_path):
    from glacli import __version__
    r = run("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"gla {__version__}"


@pytest.mark.parametrize("command", registered_commands())
def test_flags_are_shown_without_a_type(gla, command):
    r = gla(command, "--help")
    assert r.code == 0 and "--help" in r.out
    assert "<bool>" not in r.out


def piped(*args: object, columns: int | None = None) -> str:
    """Run ``gla`` with stdout on a pipe (not a terminal), ``COLUMNS`` unset unless given."""
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    if columns is not None:
        env["COLUMNS"] = str(columns)
    done = subprocess.run([*GLA, *map(str, args)], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_piped_help_keeps_every_example_line_whole():
    register_commands()
    for entry in app.registered_commands:
        doc = inspect.cleandoc(entry.callback.__doc__ or "")
        examples = [line.strip() for line in doc.split("Example:")[-1].splitlines() if line.startswith(" ")]
        text = piped(entry.name, "--help")
        for line in examples:
            assert line in text, (entry.name, line)


def test_piped_evaluate_table_keeps_each_cell_on_its_line(small_files):
    text = piped("evaluate", small_files["zs"], small_files["zs"], "--name", "a-long-method-name",
                 "--name", "another-long-method-name", "--bootstrap", "20", "--baseline", "a-long-method-name",
                 "--device", "cpu")
    top1 = [line for line in text.splitlines() if line.lstrip().startswith("top-1")]
    assert len(top1) == 2  # the table and the difference table
    assert top1[0].count("±") == 2, top1[0]  # value and interval on one line
    assert "[" in top1[1] and "]" in top1[1], top1[1]


def test_columns_sets_the_width_when_given():
    text = piped("evaluate", "--help", columns=70)
    assert max(len(line) for line in text.splitlines()) <= 70


def test_evaluate_json_is_a_flag_and_the_old_file_form_points_to_json_out(gla, small_files, tmp_path):
    r = gla("evaluate", small_files["zs"], "--json")
    assert r.code == 0 and json.loads(r.out)["schema"] == "gla-evaluate"
    assert_one_line_error(gla("evaluate", small_files["zs"], "--json", tmp_path / "r.json"),
                          "--json-out", "r.json")
    assert_one_line_error(gla("evaluate", small_files["zs"], "--json", "-"), "--json prints the results on stdout")
    assert list(tmp_path.iterdir()) == []
    r = gla("evaluate", small_files["zs"], "--json-out", tmp_path / "r.json")
    assert r.code == 0 and "top-1" in r.out  # the table, and the file
    assert json.loads((tmp_path / "r.json").read_text())["schema"] == "gla-evaluate"


# ------------------------------------------------------------------ gla info


def test_info_shows_every_attribute_of_several_files(gla, tmp_path):
    provenance = {"target_prior": "pi_t.h5", "anchor_temperature": 0.5, "wd": 1e-3, "calibrated_on": "val.h5",
                  "concentration": 2.5, "split": "train", "from_probabilities": True}
    z, y, _ = biased_logits(10, 3, seed=1)
    a = write_logits_file(tmp_path / "a.h5", z, y, **provenance)
    b = write_logits_file(tmp_path / "b.h5", z, y, head_type="linear")
    r = gla("info", a, b)
    assert r.code == 0, r.err
    first, second = r.out.split(str(b))
    assert str(a) in first
    for key, value in provenance.items():
        assert re.search(rf"│ {key} +│ {value} ", first), key
    assert re.search(r"│ head_type +│ linear ", second)
    r = gla("info", a, b, "--json")
    docs = json.loads(r.out)
    assert [d["path"] for d in docs] == [str(a), str(b)]
    assert docs[0]["attributes"]["concentration"] == 2.5


def test_info_lists_a_priors_most_and_least_likely_classes(gla, tmp_path):
    from glacli.base.types import Prior
    from glacli.io.paramfile import write_prior
    q = np.random.default_rng(3).dirichlet(np.ones(12))
    names = [f"c{k}" for k in range(12)]
    write_prior(tmp_path / "q.h5", Prior(prior=q, classnames=names, temperature=1.0, method="nll"))
    r = gla("info", tmp_path / "q.h5", "--json")
    doc = json.loads(r.out)
    order = np.argsort(q)
    assert [name for name, _ in doc["most_likely"]] == [names[k] for k in order[::-1][:5]]
    assert [name for name, _ in doc["least_likely"]] == [names[k] for k in order[:5]]
    np.testing.assert_allclose([v for _, v in doc["most_likely"]], q[order[::-1][:5]], rtol=1e-12)
    r = gla("info", tmp_path / "q.h5")
    assert f"{names[order[-1]]} {q[order[-1]]:.4g}" in r.out and "converged" in r.out


def test_info_of_an_imported_prior_shows_no_solver_record(gla, tmp_path):
    raw = np.array([0.3, 0.2, 0.15, 0.1, 0.054])  # sums to 0.804, as the authors' ImageNet q
    np.save(tmp_path / "q.npy", raw)
    assert gla("import", tmp_path / "q.npy", "--kind", "prior", "-o", tmp_path / "q.h5").code == 0
    r = gla("info", tmp_path / "q.h5")
    assert r.code == 0, r.err
    assert re.search(r"│ imported_sum +│ 0\.804 ", r.out)
    assert "converged" not in r.out and "max_moment_gap" not in r.out and "iterations" not in r.out
    assert re.search(r"│ solver +│ none \(imported\)", r.out)


@pytest.mark.parametrize("args", [
    ["calibrate", "{zs}", "--val", "{zs}", "-o", "{out}/c.h5"],
    ["estimate-prior", "{zs}", "-o", "{out}/q.h5", "--device", "cpu"],
    ["subset", "{zs}", "--shots", "2", "--seed", "0", "-o", "{out}/s.h5"],
    ["info", "{q}"],
    ["report", "{r}", "-o", "{out}/r.md"],
], ids=lambda a: a[0])
def test_one_json_convention_in_every_command(gla, small_files, tmp_path, args):
    """``--json`` prints the result as JSON on stdout (no table); ``--json-out FILE`` writes the same JSON and
    the table is printed as without it."""
    def run_with(*extra: str, folder: Path) -> tuple:
        folder.mkdir()
        r = gla(*[a.format(out=folder, **small_files) for a in args], *extra)
        assert r.code == 0, r.err
        return r
    printed = run_with("--json", folder=tmp_path / "a")
    written = run_with("--json-out", str(tmp_path / "b" / "out.json"), folder=tmp_path / "b")
    plain = run_with(folder=tmp_path / "c")
    expected, document = json.loads(printed.out), json.loads((tmp_path / "b" / "out.json").read_text())
    volatile = {"seconds", "output", "created", "gla_id", "path"}  # differ between runs or folders
    strip = lambda d: {k: v for k, v in d.items() if k not in volatile} if isinstance(d, dict) else d
    assert strip(document).keys() == strip(expected).keys()
    assert written.out.strip() and not written.out.lstrip().startswith("{")  # the table, not JSON
    assert written.out.count("\n") == plain.out.count("\n")
