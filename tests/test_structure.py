"""The package's shape, checked by reading its source (fast, nothing imported): short functions, no import
circles (function-level imports counted), data flowing one way (rlhf_rm/data reads and validates; it imports
nothing above it), serving never importing training, and a package root of entry points and shared modules."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "rlhf_rm"
MAX_FUNCTION_LINES = 80
# rlhf_rm/data/ may import only the standard library, third-party packages and rlhf_rm.data itself.
ABOVE_DATA = ("rlhf_rm.batching", "rlhf_rm.model", "rlhf_rm.train", "rlhf_rm.prepare", "rlhf_rm.losses",
              "rlhf_rm.serve", "rlhf_rm.checkpoint.scorer", "rlhf_rm.config")


def python_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.py") if "__pycache__" not in p.parts)


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import in the file, function-level imports included."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found += [(node.lineno, node.module)] + [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
    return found


def test_no_function_in_the_package_is_over_80_lines():
    long = []
    for path in python_files(PACKAGE):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, "functions over 80 lines:\n" + "\n".join(long)


@pytest.mark.parametrize("path", python_files(PACKAGE / "data"), ids=lambda p: p.name)
def test_data_imports_nothing_above_it(path):
    upward = [f"{path.name}:{line} imports {module}" for line, module in imported_modules(path)
              if module == "rlhf_rm" or module.startswith(ABOVE_DATA) or module.startswith("rlhf_rm.training")]
    assert not upward, upward


def test_batching_does_not_import_preparation_or_training():
    upward = [f"{path.name}:{line} imports {module}" for path in python_files(PACKAGE / "batching")
              for line, module in imported_modules(path)
              if module.startswith(("rlhf_rm.prepare", "rlhf_rm.train", "rlhf_rm.model", "rlhf_rm.data.load"))]
    assert not upward, upward


def test_components_do_not_import_the_trainer_or_the_entry_point():
    """The trainer wires components; no component reaches back up to it."""
    wiring = ("rlhf_rm.train", "rlhf_rm.training.recipe")
    below = [p for p in python_files(PACKAGE) if p.parent.name in ("data", "batching", "losses", "prepare", "training")]
    upward = [f"{path.relative_to(PACKAGE)}:{line} imports {module}" for path in below
              for line, module in imported_modules(path) if module in wiring or module.startswith("rlhf_rm.train.")]
    assert not upward, upward


@pytest.mark.parametrize("path", python_files(REPO / "benchmarks"), ids=lambda p: p.name)
def test_benchmarks_use_only_public_names(path):
    private = [f"{path.name}:{line} imports {module}" for line, module in imported_modules(path)
               if module.startswith("rlhf_rm") and any(part.startswith("_") and not part.startswith("__")
                                                       for part in module.split("."))]
    assert not private, private


@pytest.mark.slow
def test_missing_shared_data_fails_tests_instead_of_skipping_them():
    """Tests on ../shared/data used to skip silently without it; CI always has it, so a missing set is a
    failure. No test may skip on it, and a test that needs it fails when it is absent."""
    import os
    import re
    import subprocess
    import sys

    skipping = [f"{path.name}:{number}" for path in sorted((REPO / "tests").glob("test_*.py"))
                for number, line in enumerate(path.read_text().splitlines(), 1)
                if re.search(r"skipif\(.*SHARED_DATA", line)]
    assert not skipping, skipping
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          "tests/test_data.py::test_shipped_hh_rlhf_loads_completely"], cwd=REPO,
                         env={**os.environ, "RLHF_RM_SHARED_DATA": "/nonexistent/shared/data"},
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 1 and "1 failed" in run.stdout, run.stdout[-2000:]
