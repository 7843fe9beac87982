"""Every layout-sensitive op inside a model where the CPU pipeline's layout conversion runs.

A model with a convolution gets NHWC convolutions (``ConvertLayout``), and layout propagation
hands the NHWC layout on to the ops that follow. An op tested alone never meets that: a
ConvTranspose after a Conv failed to build (TVM cannot legalize an NHWC conv2d_transpose)
while its single-node test passed. Here each op reads a Conv's output and feeds another Conv,
compiled and compared with onnxruntime.
"""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import lepton_opt
from tests.models import ort_run

F = TensorProto.FLOAT
C = 8  # channels after the first convolution


def _weights(rng, *shape):
    return (rng.standard_normal(shape) / np.sqrt(np.prod(shape[1:]))).astype(np.float32)


# op -> (nodes from "a" (N, C, 12, 12) to "b" (N, C2, H, W) with C2 given, extra initializers)
def _case(op, rng):
    if op == "ConvTranspose":
        return [helper.make_node("ConvTranspose", ["a", "wt"], ["b"], strides=[2, 2], pads=[1, 1, 1, 1],
                                 output_padding=[1, 1])], {"wt": _weights(rng, C, 4, 3, 3)}, 4
    if op == "ConvTransposeGrouped":
        return [helper.make_node("ConvTranspose", ["a", "wt"], ["b"], strides=[2, 2], group=2)], \
            {"wt": _weights(rng, C, 2, 2, 2)}, 4
    if op == "MaxPool":
        return [helper.make_node("MaxPool", ["a"], ["b"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])], {}, C
    if op == "AveragePool":
        return [helper.make_node("AveragePool", ["a"], ["b"], kernel_shape=[2, 2], strides=[2, 2])], {}, C
    if op == "LpPool":
        return [helper.make_node("LpPool", ["a"], ["b"], kernel_shape=[2, 2], strides=[2, 2])], {}, C
    if op == "GlobalAveragePool":
        return [helper.make_node("GlobalAveragePool", ["a"], ["b"])], {}, C
    if op == "GlobalMaxPool":
        return [helper.make_node("GlobalMaxPool", ["a"], ["b"])], {}, C
    if op == "ResizeNearest":
        return [helper.make_node("Resize", ["a", "", "scales"], ["b"], mode="nearest")], \
            {"scales": np.array([1, 1, 2, 2], np.float32)}, C
    if op == "ResizeLinear":
        return [helper.make_node("Resize", ["a", "", "", "sizes"], ["b"], mode="linear",
                                 coordinate_transformation_mode="half_pixel")], \
            {"sizes": np.array([1, C, 20, 20], np.int64)}, C
    if op == "InstanceNormalization":
        return [helper.make_node("InstanceNormalization", ["a", "s", "t"], ["b"])], \
            {"s": rng.random(C).astype(np.float32) + 0.5, "t": rng.random(C).astype(np.float32)}, C
    if op == "BatchNormalization":
        return [helper.make_node("BatchNormalization", ["a", "s", "t", "m", "v"], ["b"])], \
            {"s": rng.random(C).astype(np.float32) + 0.5, "t": rng.random(C).astype(np.float32),
             "m": rng.random(C).astype(np.float32), "v": rng.random(C).astype(np.float32) + 0.5}, C
    if op == "LRN":
        return [helper.make_node("LRN", ["a"], ["b"], size=3)], {}, C
    if op == "DepthToSpace":
        return [helper.make_node("DepthToSpace", ["a"], ["b"], blocksize=2, mode="CRD")], {}, C // 4
    if op == "SpaceToDepth":
        return [helper.make_node("SpaceToDepth", ["a"], ["b"], blocksize=2)], {}, C * 4
    if op == "PRelu":
        return [helper.make_node("PRelu", ["a", "slope"], ["b"])], \
            {"slope": rng.random((C, 1, 1)).astype(np.float32)}, C
    if op == "Softmax":
        return [helper.make_node("Softmax", ["a"], ["b"], axis=1)], {}, C
    if op == "ConcatChannels":
        return [helper.make_node("Concat", ["a", "a"], ["b"], axis=1)], {}, 2 * C
    if op == "SplitChannels":
        return [helper.make_node("Split", ["a"], ["b", "b2"], axis=1, num_outputs=2)], {}, C // 2
    if op == "SliceChannels":
        return [helper.make_node("Slice", ["a", "st", "en", "ax"], ["b"])], \
            {"st": np.array([2], np.int64), "en": np.array([6], np.int64), "ax": np.array([1], np.int64)}, 4
    if op == "ReduceMeanSpatial":
        return [helper.make_node("ReduceMean", ["a", "axes"], ["b"], keepdims=1)], \
            {"axes": np.array([2, 3], np.int64)}, C
    if op == "PadSpatial":
        return [helper.make_node("Pad", ["a", "pads"], ["b"], mode="reflect")], \
            {"pads": np.array([0, 0, 1, 2, 0, 0, 2, 1], np.int64)}, C
    if op == "TransposeToNHWCAndBack":  # what tf2onnx writes around every convolution
        return [helper.make_node("Transpose", ["a"], ["t"], perm=[0, 2, 3, 1]),
                helper.make_node("Relu", ["t"], ["r"]),
                helper.make_node("Transpose", ["r"], ["b"], perm=[0, 3, 1, 2])], {}, C
    if op == "GroupNormalization":
        # opset 18's form: one scale and bias per group
        return [helper.make_node("GroupNormalization", ["a", "s", "t"], ["b"], num_groups=2)], \
            {"s": rng.random(2).astype(np.float32) + 0.5, "t": rng.random(2).astype(np.float32)}, C
    if op == "MulChannelScale":  # squeeze-excite's per-channel gate
        return [helper.make_node("GlobalAveragePool", ["a"], ["g"]), helper.make_node("Sigmoid", ["g"], ["s"]),
                helper.make_node("Mul", ["a", "s"], ["b"])], {}, C
    raise AssertionError(op)


OPS = ["ConvTranspose", "ConvTransposeGrouped", "MaxPool", "AveragePool", "LpPool", "GlobalAveragePool",
       "GlobalMaxPool", "ResizeNearest", "ResizeLinear", "InstanceNormalization", "BatchNormalization", "LRN",
       "DepthToSpace", "SpaceToDepth", "PRelu", "Softmax", "ConcatChannels", "SplitChannels", "SliceChannels",
       "ReduceMeanSpatial", "PadSpatial", "TransposeToNHWCAndBack", "GroupNormalization", "MulChannelScale"]


@pytest.mark.parametrize("op", OPS)
def test_op_between_convolutions(op):
    rng = np.random.default_rng(OPS.index(op))
    middle, inits, channels = _case(op, rng)
    inits = {"w1": _weights(rng, C, 3, 3, 3), "w2": _weights(rng, 4, channels, 3, 3), **inits}
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["a"]), *middle,
             helper.make_node("Conv", ["b", "w2"], ["y"], pads=[1, 1, 1, 1])]
    graph = helper.make_graph(nodes, op, [helper.make_tensor_value_info("x", F, [1, 3, 12, 12])],
                              [helper.make_tensor_value_info("y", F, None)],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)
    feeds = {"x": rng.standard_normal((1, 3, 12, 12)).astype(np.float32)}
    expected = ort_run(model, feeds)["y"]
    got = lepton_opt.compile(model).run(feeds)["y"]
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)
