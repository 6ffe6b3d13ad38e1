"""Shared test fixtures: run ``gla`` in-process, locate the real CLIP fixtures; the e2e budgets."""
from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from glacli.cli import main

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


def assert_one_line_error(run: Run, *fragments: str) -> None:
    """A user error: exit 2, one line on stderr naming what is wrong, no traceback."""
    assert run.code == 2, (run.code, run.err)
    lines = [line for line in run.err.splitlines() if line.strip()]
    assert len(lines) == 1, run.err
    assert lines[0].startswith("gla: error: "), lines[0]
    assert "Traceback" not in run.err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    """An ``e2e(budget=S)`` test that passes but takes longer than S seconds fails: the end-to-end cases
    keep ``make test`` under five minutes on two cores only while each stays within its budget."""
    started = time.perf_counter()
    result = yield
    marker = item.get_closest_marker("e2e")
    took = time.perf_counter() - started
    if marker is not None and took > marker.kwargs["budget"]:
        pytest.fail(f"took {took:.0f} s, over its e2e budget of {marker.kwargs['budget']} s: make it faster, "
                    "or raise the budget knowing what it costs `make test`")
    return result
