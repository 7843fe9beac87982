"""The package's layers point one way (a static read of every module's imports, those inside
functions included): the bottom (errors, ir, evaluation) imports nothing above it; passes and
targets never import the API, the CLI, the benchmark runner or the tools built on them; TVM is
imported only under targets/ and by the runtime module."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "lepton_opt"

# layer -> the lepton_opt modules it may not import (prefixes)
ABOVE = {
    "errors": ["lepton_opt."],
    "ir": ["lepton_opt.passes", "lepton_opt.targets", "lepton_opt.evaluation", "lepton_opt.bench",
           "lepton_opt.api", "lepton_opt.cli", "lepton_opt.debugging", "lepton_opt.searching"],
    "evaluation": ["lepton_opt.passes", "lepton_opt.targets", "lepton_opt.bench", "lepton_opt.api",
                   "lepton_opt.cli", "lepton_opt.debugging", "lepton_opt.searching"],
    "passes": ["lepton_opt.targets", "lepton_opt.bench", "lepton_opt.api", "lepton_opt.cli",
               "lepton_opt.debugging", "lepton_opt.searching"],
    "targets": ["lepton_opt.bench", "lepton_opt.api", "lepton_opt.cli", "lepton_opt.debugging",
                "lepton_opt.searching"],
    "runtime": ["lepton_opt.passes", "lepton_opt.bench", "lepton_opt.api", "lepton_opt.cli", "lepton_opt.ir",
                "lepton_opt.evaluation"],
}


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
    return found


def _layer(path: Path) -> str:
    part = path.relative_to(PACKAGE).parts[0]
    return part.removesuffix(".py")


MODULES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_down(path):
    forbidden = ABOVE.get(_layer(path), [])
    wrong = [f"{path.relative_to(PACKAGE)}:{line} imports {name}" for line, name in _imports(path)
             if any(name == f.rstrip(".") or name.startswith(f if f.endswith(".") else f + ".") or name == f
                    for f in forbidden)]
    assert not wrong, wrong


def test_tvm_is_imported_only_by_targets_and_the_runtime():
    wrong = [f"{p.relative_to(PACKAGE)}:{line}" for p in MODULES if _layer(p) not in ("targets", "runtime")
             for line, name in _imports(p) if name == "tvm" or name.startswith(("tvm.", "tvm_ffi"))]
    assert not wrong, wrong
