"""Helpers for the fusion tests: build small models with weights, fuse, explain refusals."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
from onnx import numpy_helper

from lepton_opt.passes.registry import PASSES
from tests.passes.common import assert_same_outputs, ops, parse, run_passes

__all__ = ["header", "weight", "fuse", "refusals", "ops", "parse"]


def header(opset: int = 17) -> str:
    ir_version = onnx.helper.find_min_ir_version_for([onnx.helper.make_opsetid("", opset)])
    return f'<ir_version: {ir_version}, opset_import: ["" : {opset}]>'


def weight(name: str, shape, seed: int = 0, low: float | None = None) -> onnx.TensorProto:
    """A seeded float32 initializer; ``low`` makes it uniform in [low, low + 1] (BN variances)."""
    rng = np.random.default_rng(abs(hash(name)) % 1000 + seed)
    data = rng.standard_normal(shape) if low is None else rng.uniform(low, low + 1, shape)
    return numpy_helper.from_array(np.asarray(data, np.float32), name)


def fuse(model: onnx.ModelProto, pass_name: str, *, atol: float = 1e-5, shapes=None):
    """Run one fusion pass to a fixed point (verified after each run), check onnxruntime
    gives the same outputs on seeded inputs, return the model and the pass's rewrite count."""
    after, result = run_passes(model, pass_name, input_shapes=None)
    assert_same_outputs(model, after, shapes=shapes, atol=atol)
    return after, sum(row.rewrites for row in result.table)


def refusals(model: onnx.ModelProto, pass_name: str) -> list[str]:
    """The reasons the pass's rules gave for refusing (pattern matched, check said no)."""
    return PASSES[pass_name]().refusals(ir.serde.deserialize_model(model))
