"""The shape of the package (docs/architecture.md): module sizes, and math that loads no I/O or UI library.

Who may import whom is checked by `lint-imports` (the contracts in pyproject.toml), which
`make test` runs before these tests.
"""
from __future__ import annotations

import subprocess
import sys

from conftest import ROOT

MAX_LINES = 500
MATH = ("prior", "prior_profile", "prior_newton", "prior_kept", "prior_passes", "calibration", "label_shift", "combine", "metrics", "bootstrap", "probe", "anchor", "prompt_learning", "subset", "heads", "zeroshot",
        "report", "validation", "types", "chunking")


def test_no_module_is_over_500_lines():
    package = ROOT / "glacli"
    sizes = {str(p.relative_to(package)): len(p.read_text(encoding="utf-8").splitlines())
             for p in package.rglob("*.py")}
    assert {name: n for name, n in sizes.items() if n > MAX_LINES} == {}


def test_the_math_imports_no_file_plotting_or_command_line_library():
    code = (f"import importlib, sys; [importlib.import_module('glacli.' + m) for m in {MATH!r}]; "
            "print(sorted(m for m in ('h5py', 'typer', 'click', 'rich', 'matplotlib') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.strip() == "[]", done.stdout
