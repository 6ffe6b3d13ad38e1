"""What import-linter cannot check: what each entry point loads at run time, third-party packages
included. A command loads torch only when it needs a model or a tensor, the package root loads
neither the API nor a command-line library, and the math and the base load no file, plotting or
command-line library.

Who may import whom is checked by `lint-imports` (the contracts in pyproject.toml), which
`make test` runs before these tests.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import subprocess_env

from glacli.cli.main import COMMAND_MODULES

NO_TORCH = {"torch": False}
ENTRY_POINTS = [
    ("gla --help", ["--help"], {"torch": False, "h5py": False, "glacli.cli.commands.combine": False}),
    *[(f"gla {name} --help", [name, "--help"], NO_TORCH) for name in COMMAND_MODULES],
    ("estimate-prior", ["estimate-prior", "{zs}", "-o", "{dir}/q2.h5", "--device", "cpu"], NO_TORCH),
    ("calibrate", ["calibrate", "{zs}", "--val", "{zs}", "-o", "{dir}/cal.h5"], NO_TORCH),
    ("combine", ["combine", "--zeroshot", "{zs}", "--prior", "{q}", "-o", "{dir}/debiased.h5"], NO_TORCH),
    ("evaluate", ["evaluate", "{zs}", "--bootstrap", "10", "--device", "cpu", "--json"], NO_TORCH),
    ("report", ["report", "{r}", "-o", "{dir}/r.md"], NO_TORCH),
    ("import npy logits", ["import", "{npy}", "--kind", "logits", "-o", "{dir}/imported.h5"], NO_TORCH),
    ("import npy prior", ["import", "{q_npy}", "--kind", "prior", "-o", "{dir}/q_npy.h5"], NO_TORCH),
    ("import pt prior", ["import", "{q_pt}", "--kind", "prior", "-o", "{dir}/q_pt.h5"], {"torch": True}),
    ("import safetensors head", ["import", "{head}", "--kind", "head", "-o", "{dir}/head.h5"], NO_TORCH),
    ("info", ["info", "{q}", "{zs}"], NO_TORCH),
    ("import glacli", "import glacli",
     {"torch": False, "typer": False, "rich": False, "h5py": False, "glacli.api": False}),
    ("the API", "import glacli as gla\ngla.estimate_prior, gla.combine, gla.evaluate, gla.load",
     {"torch": False, "typer": False, "rich": False, "click": False}),
    ("core and base", "import importlib, pkgutil, glacli.core, glacli.base\n"
                      "for package in (glacli.core, glacli.base):\n"
                      "    for module in pkgutil.walk_packages(package.__path__, package.__name__ + '.'):\n"
                      "        importlib.import_module(module.name)",
     {"h5py": False, "typer": False, "click": False, "rich": False, "matplotlib": False}),
]
"""(name, a command's arguments or Python code, which modules it must or must not have loaded)."""


@pytest.fixture(scope="module")
def inputs(small_files) -> dict[str, Path]:
    """The small files, a prior as ``.npy`` and ``.pt``, and a head as ``.safetensors``."""
    import torch
    from safetensors.numpy import save_file

    folder = small_files["dir"]
    np.save(folder / "q.npy", np.array([0.25, 0.75]))
    torch.save({"q": torch.tensor([0.25, 0.75])}, folder / "q.pt")
    rng = np.random.default_rng(0)
    save_file({"module.classification_head.weight": rng.normal(size=(3, 4)).astype(np.float32),
               "module.classification_head.bias": rng.normal(size=3).astype(np.float32)}, str(folder / "st.safetensors"))
    return {**small_files, "q_npy": folder / "q.npy", "q_pt": folder / "q.pt", "head": folder / "st.safetensors"}


@pytest.mark.parametrize("run, loaded", [case[1:] for case in ENTRY_POINTS], ids=[case[0] for case in ENTRY_POINTS])
def test_each_entry_point_loads_only_what_it_needs(run: list[str] | str, loaded: dict[str, bool], inputs):
    if isinstance(run, list):
        run = f"from glacli.cli.main import main\nassert main({[a.format(**inputs) for a in run]!r}) == 0"
    code = f"{run}\nimport json, sys\nprint(json.dumps({{m: m in sys.modules for m in {list(loaded)!r}}}))"
    done = subprocess.run([sys.executable, "-c", code], env=subprocess_env(), capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-800:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == loaded
