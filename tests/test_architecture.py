"""What import-linter cannot check: at run time, loading the math and the base pulls in no file,
plotting or command-line library, not even through a third-party package.

Who may import whom is checked by `lint-imports` (the contracts in pyproject.toml), which
`make test` runs before these tests.
"""
from __future__ import annotations

import subprocess
import sys


def test_the_math_and_the_base_load_no_file_plotting_or_command_line_library():
    code = ("import importlib, pkgutil, sys, glacli.core, glacli.base\n"
            "for package in (glacli.core, glacli.base):\n"
            "    for module in pkgutil.walk_packages(package.__path__, package.__name__ + '.'):\n"
            "        importlib.import_module(module.name)\n"
            "print(sorted(m for m in ('h5py', 'typer', 'click', 'rich', 'matplotlib') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.strip() == "[]", done.stdout
