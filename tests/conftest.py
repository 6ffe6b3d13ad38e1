"""Shared test fixtures: run ``gla`` in-process, locate the real CLIP fixtures, an extraction that blocks
half-way in a child process; the e2e budgets."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from synth import biased_logits, write_logits_file

from glacli.cli.main import main

ROOT = Path(__file__).resolve().parents[1]
SHARED_FIXTURES = ROOT.parent / "shared" / "fixtures"


@dataclass
class Run:
    code: int
    out: str
    err: str


@pytest.fixture
def gla(capsys):
    """``gla(*args)`` runs the command in-process and returns its exit code, stdout and stderr."""

    def run(*args: object) -> Run:
        capsys.readouterr()
        code = main([str(a) for a in args])
        captured = capsys.readouterr()
        return Run(code, captured.out, captured.err)

    return run


@pytest.fixture
def shared_fixtures() -> Path:
    """The folder of real model outputs; tests using it skip where it is absent."""
    if not SHARED_FIXTURES.is_dir():
        pytest.skip(f"real CLIP outputs not available: {SHARED_FIXTURES} is absent")
    return SHARED_FIXTURES


@pytest.fixture(scope="module")
def small_files(tmp_path_factory) -> dict[str, Path]:
    """A labelled logits file, its prior, an evaluate result and the logits as ``.npy``."""
    folder = tmp_path_factory.mktemp("small")
    z, y, _ = biased_logits(30, 4, seed=22)
    logits = write_logits_file(folder / "zs.h5", z, y)
    assert main(["estimate-prior", str(logits), "-o", str(folder / "q.h5"), "--device", "cpu"]) == 0
    assert main(["evaluate", str(logits), "--json-out", str(folder / "r.json"), "--device", "cpu"]) == 0
    np.save(folder / "z.npy", z)
    return {"dir": folder, "zs": logits, "q": folder / "q.h5", "r": folder / "r.json", "npy": folder / "z.npy"}


@pytest.fixture
def drawn(monkeypatch) -> list:
    """The figures ``--plot`` saves (each still written to its PNG), so a test can read the data drawn."""
    from glacli.io import plots
    figures, save = [], plots._save_png

    def keep(fig, path):
        figures.append(fig)
        save(fig, path)

    monkeypatch.setattr(plots, "_save_png", keep)
    return figures


def assert_one_line_error(run: Run, *fragments: str) -> None:
    """A user error: exit 2, one line on stderr naming what is wrong, no traceback."""
    assert run.code == 2, (run.code, run.err)
    lines = [line for line in run.err.splitlines() if line.strip()]
    assert len(lines) == 1, run.err
    assert lines[0].startswith("gla: error: "), lines[0]
    assert "Traceback" not in run.err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def subprocess_env() -> dict[str, str]:
    """The environment of a child ``python``: this checkout importable, one thread (as torchrun gives ranks)."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
            "OMP_NUM_THREADS": "1"}


@dataclass
class BlockedExtraction:
    """``gla extract`` of a manifest of 12 JPEGs whose row 8 is a named pipe: with ``--commit-every 4`` a
    run commits rows 0-7 (two chunks of parts), then blocks reading the pipe until :meth:`unblock`."""

    args: list[str]
    output: Path
    parts: Path
    pipe: Path

    def start(self, timeout: float = 120) -> subprocess.Popen:
        """The extraction in a child process, returned once rows 0-7 are committed (killed if it fails first)."""
        proc = subprocess.Popen([sys.executable, "-m", "glacli", *self.args], env=subprocess_env(),
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        try:
            while not (self.parts / "chunk-00000001.npz").exists():
                assert proc.poll() is None, proc.stderr.read().decode()
                assert time.monotonic() < deadline, "extraction did not reach the named pipe"
                time.sleep(0.05)
        except BaseException:
            proc.kill()
            proc.wait()
            proc.stderr.close()
            raise
        return proc

    def unblock(self) -> None:
        """Replace the pipe by a JPEG, so the next run reads row 8."""
        from tiny_clip import write_jpeg
        self.pipe.unlink()
        write_jpeg(self.pipe, seed=8)


def blocked_extraction(folder: Path, model_args: list[str]) -> BlockedExtraction:
    """The images, the pipe and the manifest in ``folder``; ``model_args`` choose the (tiny) model.

    ``tiny_clip`` imports torch, so it is imported here, by the tests that extract, not by every test."""
    from tiny_clip import write_jpeg
    names = [f"images/{k:02d}.jpg" for k in range(12)]
    for k, name in enumerate(names):
        if k != 8:
            write_jpeg(folder / name, seed=k)
    os.mkfifo(folder / names[8])
    manifest = folder / "m.csv"
    manifest.write_text("path,label\n" + "".join(f"{n},{'ab'[k % 2]}\n" for k, n in enumerate(names)))
    out = folder / "out.h5"
    args = ["extract", str(manifest), "-o", str(out), *model_args, "--batch-size", "2", "--commit-every", "4",
            "--workers", "0", "--dtype", "float32"]
    return BlockedExtraction(args, out, folder / ".out.h5.parts", folder / names[8])


E2E_DURATIONS: list[tuple[str, float, float]] = []
"""(test id, seconds, budget) of every ``e2e(budget=S)`` test run, for the summary at the end."""


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    """Time an ``e2e(budget=S)`` test. Its budget is what it should cost ``make test`` (under five minutes on
    two cores); a slow machine is no failure, so the durations are reported at the end of the run, those over
    their budget marked, and no test fails for its time (benchmarks measure speed)."""
    started = time.perf_counter()
    try:
        return (yield)
    finally:
        marker = item.get_closest_marker("e2e")
        if marker is not None:
            E2E_DURATIONS.append((item.nodeid, time.perf_counter() - started, float(marker.kwargs["budget"])))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not E2E_DURATIONS:
        return
    terminalreporter.section("e2e durations (budget: what each should cost make test)")
    for nodeid, took, budget in sorted(E2E_DURATIONS, key=lambda entry: -entry[1]):
        over = f"  over its budget by {took - budget:.0f} s" if took > budget else ""
        terminalreporter.write_line(f"{took:7.1f} s  budget {budget:5.0f} s  {nodeid}{over}")
