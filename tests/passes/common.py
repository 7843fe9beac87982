"""Helpers for the pass tests: parse a model, run passes, compare with onnxruntime."""

from __future__ import annotations

import collections

import numpy as np
import onnx
import onnx.parser

import lepton_opt
from tests.models import ort_run, random_inputs


def parse(text: str, initializers=()) -> onnx.ModelProto:
    """``onnx.parser`` text plus extra initializers (``onnx.TensorProto``), checker-validated."""
    model = onnx.parser.parse_model(text)
    model.graph.initializer.extend(initializers)
    onnx.checker.check_model(model, full_check=True)
    return model


def ops(model: onnx.ModelProto | onnx.GraphProto) -> collections.Counter:
    graph = model.graph if isinstance(model, onnx.ModelProto) else model
    return collections.Counter(n.op_type for n in graph.node)


def run_passes(model: onnx.ModelProto, *names: str, input_shapes=None, verify_each: bool = True):
    """Run ``names`` to a fixed point (verified after each pass); the result, checker-validated."""
    result = lepton_opt.optimize(model, passes=list(names), input_shapes=input_shapes, verify_each=verify_each)
    onnx.checker.check_model(result.model, full_check=True)
    return result.model, result


def assert_same_outputs(before: onnx.ModelProto, after: onnx.ModelProto, shapes=None, *, atol: float = 1e-5,
                        seed: int = 0) -> None:
    """onnxruntime (optimizations off) gives the same outputs, within ``atol`` (0: exactly)."""
    feeds = random_inputs(before, seed=seed, shapes=shapes)
    expected, got = ort_run(before, feeds), ort_run(after, feeds)
    assert list(expected) == list(got)
    for name in expected:
        if atol == 0:
            np.testing.assert_array_equal(got[name], expected[name], err_msg=name)
        else:
            np.testing.assert_allclose(got[name], expected[name], rtol=atol, atol=atol, err_msg=name)
