"""Simplification before lowering: constant and shape folding, dead-code removal, CSE.

Reuses onnxscript's optimizer (constant folding with symbolic shape inference, its default
no-op rewrites, unused-node removal, initializer deduplication and CSE) rather than writing
those again. Under fixed input shapes this removes the shape-computing subgraphs that torch,
paddle2onnx and ultralytics exports contain (Shape -> Gather -> Concat -> Reshape,
ConstantOfShape, Range, Expand) before the model reaches the lowering.
"""

from __future__ import annotations

import warnings

import onnx_ir as ir
import onnxscript.optimizer

FOLD_PASS = "fold-constants"


def fold_constants(model: ir.Model) -> list[str]:
    """Fold ``model`` in place; returns the names of the passes that ran (for the manifest).

    Raises whatever the folder raises; the model may then be half-rewritten, so callers that
    want to go on without folding must reload it.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        onnxscript.optimizer.optimize_ir(model, num_iterations=2)
    return [FOLD_PASS]
