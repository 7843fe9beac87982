"""The command line that every zoo exporter (benchmarks/zoo/export_*.py) shares.

Each exporter runs in its own virtualenv (benchmarks/results/zoo/venv-<producer>) that has the producer's
framework but not lepton_opt, so the shared code cannot live in the package: it lives here, beside the
scripts, whose own directory Python puts on sys.path. Standard library only.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable, Iterable, Optional


def first_line(e: BaseException) -> str:
    """The first line of an exception's message: one log line per skipped model."""
    text = str(e)
    return text.splitlines()[0] if text else ""


def run(description: str, models: Iterable[str], export_one: Callable[[str, Path, bool], object], *,
        force_help: str = "export again even if the .onnx exists",
        setup: Optional[Callable[[], None]] = None,
        error_text: Callable[[BaseException], str] = first_line) -> int:
    """Parse the exporter options and export the chosen models; returns the exit status.

    ``export_one(name, out, force)`` writes ``out/NAME.onnx`` (and its .json), leaving both alone when they
    exist unless ``force``. A model whose export raises is reported as ``skip NAME: Type: text`` on stderr
    (``text`` from ``error_text``) and the others go on; ``setup`` runs once before the first export. The
    status is 0 when at least one chosen model's .onnx is there afterwards, else 1.
    """
    models = list(models)
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--only", default="", help="comma-separated model names")
    ap.add_argument("--list", action="store_true", help="print the model names and exit")
    ap.add_argument("--force", action="store_true", help=force_help)
    args = ap.parse_args()
    if args.list:
        print("\n".join(models))
        return 0
    if args.out is None:
        ap.error("--out is required")
    names = [n for n in args.only.split(",") if n] or models
    unknown = [n for n in names if n not in models]
    if unknown:
        ap.error(f"unknown model(s): {', '.join(unknown)}")
    args.out.mkdir(parents=True, exist_ok=True)
    if setup is not None:
        setup()
    ok = 0
    for name in names:
        try:
            export_one(name, args.out, args.force)
            if (args.out / f"{name}.onnx").exists():
                ok += 1
        except Exception as e:  # one model's failure must not stop the others
            print(f"skip {name}: {type(e).__name__}: {error_text(e)}", file=sys.stderr)
    return 0 if ok else 1


def dims_note(model) -> str:
    """How the exporter declared the graph inputs' and outputs' dims (paddle2onnx 1.x writes
    dim_value -1, torch and tf2onnx name them), for a model's .json notes."""
    parts = []
    for kind, values in (("in", model.graph.input), ("out", model.graph.output)):
        for v in values:
            dims = [d.dim_param if d.dim_param else (str(d.dim_value) if d.HasField("dim_value") else "?")
                    for d in v.type.tensor_type.shape.dim]
            parts.append(f"{kind} {v.name}[{','.join(dims)}]")
    return "declared dims: " + " ".join(parts)
