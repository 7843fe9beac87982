"""Every converter against onnxruntime: one single-node model per case, compiled for the CPU."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import lepton_opt
from tests.models import ort_run

F, I64, B = TensorProto.FLOAT, TensorProto.INT64, TensorProto.BOOL
NP = {F: np.float32, I64: np.int64, B: np.bool_, TensorProto.INT32: np.int32}


def node_model(op_type, inputs, outputs, attrs=None, inits=None, opset=17):
    """inputs: [(name, elem_type, shape)]; outputs: [(name, elem_type)]; inits: {name: array}."""
    inits = inits or {}
    node = helper.make_node(op_type, [n for n, *_ in inputs] + list(inits), [n for n, _ in outputs],
                            name=f"{op_type.lower()}_node", **(attrs or {}))
    graph = helper.make_graph(
        [node], f"{op_type}_test",
        [helper.make_tensor_value_info(n, t, s) for n, t, s in inputs],
        [helper.make_tensor_value_info(n, t, None) for n, t in outputs],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


def feeds_for(model, seed=0):
    rng = np.random.default_rng(seed)
    feeds = {}
    for vi in model.graph.input:
        t = vi.type.tensor_type
        shape = [d.dim_value for d in t.shape.dim]
        if t.elem_type == F:
            feeds[vi.name] = rng.standard_normal(shape).astype(np.float32)
        elif t.elem_type == B:
            feeds[vi.name] = rng.integers(0, 2, shape).astype(bool)
        else:
            feeds[vi.name] = rng.integers(0, 4, shape).astype(NP[t.elem_type])
    return feeds


def check(model, atol=1e-5, rtol=1e-4, feeds=None):
    feeds = feeds or feeds_for(model)
    expected = ort_run(model, feeds)
    got = lepton_opt.compile(model).run(feeds)
    assert list(got) == list(expected)
    for name, ref in expected.items():
        assert got[name].shape == ref.shape, name
        assert got[name].dtype == ref.dtype, name
        np.testing.assert_allclose(got[name], ref, atol=atol, rtol=rtol, err_msg=name)


X = [("x", F, [2, 3, 4, 5])]
Y = [("y", F)]

UNARY = ["Abs", "Neg", "Exp", "Sqrt", "Floor", "Ceil", "Erf", "Sigmoid", "Tanh", "Relu", "Sin", "Cos",
         "Softplus", "Softsign", "HardSwish", "Mish", "Round", "Sign", "Atan", "Reciprocal", "Sinh", "Cosh"]


@pytest.mark.parametrize("op_type", UNARY)
def test_unary(op_type):
    model = node_model(op_type, X, Y, opset=18)
    feeds = feeds_for(model)
    if op_type in ("Sqrt",):
        feeds["x"] = np.abs(feeds["x"]) + 0.1
    if op_type == "Reciprocal":
        feeds["x"] = feeds["x"] + np.sign(feeds["x"]) * 0.5
    check(model, feeds=feeds)


@pytest.mark.parametrize("op_type", ["Add", "Sub", "Mul", "Div", "Max", "Min", "Pow"])
def test_binary_broadcast(op_type):
    model = node_model(op_type, [("a", F, [2, 3, 4]), ("b", F, [3, 1])], Y)
    feeds = feeds_for(model)
    if op_type == "Pow":
        feeds["a"] = np.abs(feeds["a"]) + 0.5
    if op_type == "Div":
        feeds["b"] = feeds["b"] + np.sign(feeds["b"]) * 0.5
    check(model, feeds=feeds)


@pytest.mark.parametrize("op_type", ["Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual"])
def test_comparison(op_type):
    check(node_model(op_type, [("a", I64, [3, 4]), ("b", I64, [4])], [("y", B)]))


def test_integer_div_truncates_toward_zero():
    model = node_model("Div", [("a", I64, [6])], [("y", I64)], inits={"b": np.array([3, -3, 3, -3, 2, 5], np.int64)})
    check(model, feeds={"a": np.array([7, 7, -7, -7, -1, 4], np.int64)})


@pytest.mark.parametrize("op_type,attrs", [
    ("LeakyRelu", {"alpha": 0.2}), ("Elu", {"alpha": 0.7}), ("Selu", {}), ("Celu", {"alpha": 1.5}),
    ("HardSigmoid", {"alpha": 0.3, "beta": 0.4}), ("ThresholdedRelu", {"alpha": 0.3}),
    ("Gelu", {}), ("Gelu", {"approximate": "tanh"}), ("Softmax", {"axis": 1}), ("LogSoftmax", {}),
    ("Hardmax", {"axis": -1}),
])
def test_activation(op_type, attrs):
    check(node_model(op_type, X, Y, attrs, opset=20))


def test_softmax_opset11_coerces_to_2d():
    check(node_model("Softmax", X, Y, {"axis": 1}, opset=11))


def test_clip_with_min_max_inputs():
    model = node_model("Clip", X, Y, inits={"lo": np.array(0.0, np.float32), "hi": np.array(6.0, np.float32)})
    check(model, feeds={"x": np.linspace(-10, 10, 120, dtype=np.float32).reshape(2, 3, 4, 5)})


def test_prelu():
    check(node_model("PRelu", X, Y, inits={"slope": np.array([0.1, 0.2, 0.3], np.float32).reshape(3, 1, 1)}))


@pytest.mark.parametrize("attrs", [
    {"pads": [1, 1, 1, 1]},
    {"strides": [2, 2], "pads": [0, 1, 1, 0]},
    {"auto_pad": "SAME_UPPER", "strides": [2, 2]},
    {"dilations": [2, 2]},
    {"group": 2},
])
def test_conv2d(attrs):
    rng = np.random.default_rng(1)
    group = attrs.get("group", 1)
    inits = {"w": rng.standard_normal((4, 4 // group, 3, 3)).astype(np.float32),
             "b": rng.standard_normal(4).astype(np.float32)}
    check(node_model("Conv", [("x", F, [1, 4, 9, 9])], Y, attrs, inits), atol=1e-4)


def test_depthwise_conv_and_conv1d():
    rng = np.random.default_rng(2)
    check(node_model("Conv", [("x", F, [1, 6, 8, 8])], Y, {"group": 6, "pads": [1, 1, 1, 1]},
                     {"w": rng.standard_normal((6, 1, 3, 3)).astype(np.float32)}), atol=1e-4)
    check(node_model("Conv", [("x", F, [1, 3, 10])], Y, {"strides": [2]},
                     {"w": rng.standard_normal((5, 3, 3)).astype(np.float32)}), atol=1e-4)


@pytest.mark.parametrize("attrs", [{}, {"strides": [2, 2], "pads": [1, 1, 1, 1], "output_padding": [1, 1]},
                                   {"strides": [2, 2], "output_shape": [10, 10]}])
def test_conv_transpose(attrs):
    rng = np.random.default_rng(3)
    inits = {"w": rng.standard_normal((4, 2, 3, 3)).astype(np.float32), "b": rng.standard_normal(2).astype(np.float32)}
    check(node_model("ConvTranspose", [("x", F, [1, 4, 5, 5])], Y, attrs, inits), atol=1e-4)


def test_conv_transpose_3d():
    """A 3-D U-Net's upsampling (unet3d in the zoo ran it in onnxruntime before)."""
    rng = np.random.default_rng(4)
    inits = {"w": rng.standard_normal((4, 3, 2, 2, 2)).astype(np.float32), "b": rng.standard_normal(3).astype(np.float32)}
    check(node_model("ConvTranspose", [("x", F, [1, 4, 3, 4, 5])], Y, {"strides": [2, 2, 2], "pads": [0, 1, 0, 0, 1, 0]},
                     inits), atol=1e-4)


@pytest.mark.parametrize("op_type,attrs", [
    ("MaxPool", {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}),
    ("MaxPool", {"kernel_shape": [2, 2], "ceil_mode": 1, "strides": [2, 2]}),
    ("AveragePool", {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "count_include_pad": 1}),
    ("AveragePool", {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}),
    ("GlobalAveragePool", {}), ("GlobalMaxPool", {}),
])
def test_pooling(op_type, attrs):
    check(node_model(op_type, [("x", F, [1, 3, 7, 7])], Y, attrs))


def test_batchnorm_instance_norm_layer_norm():
    rng = np.random.default_rng(4)
    c = 3
    bn = {"s": rng.uniform(0.5, 1.5, c).astype(np.float32), "b": rng.standard_normal(c).astype(np.float32),
          "m": rng.standard_normal(c).astype(np.float32), "v": rng.uniform(0.5, 2, c).astype(np.float32)}
    check(node_model("BatchNormalization", X, Y, {"epsilon": 1e-3}, bn), atol=1e-4)
    check(node_model("InstanceNormalization", X, Y, {}, {"s": bn["s"], "b": bn["b"]}), atol=1e-4)
    ln = {"s": rng.standard_normal((4, 5)).astype(np.float32), "b": rng.standard_normal((4, 5)).astype(np.float32)}
    check(node_model("LayerNormalization", X, Y, {"axis": -2}, ln), atol=1e-4)


@pytest.mark.parametrize("attrs", [{}, {"transA": 1}, {"transB": 1, "alpha": 0.5, "beta": 2.0}])
def test_gemm(attrs):
    rng = np.random.default_rng(5)
    a_shape = [6, 4] if attrs.get("transA") else [4, 6]
    b = rng.standard_normal((5, 6) if attrs.get("transB") else (6, 5)).astype(np.float32)
    check(node_model("Gemm", [("a", F, a_shape)], Y, attrs, {"b": b, "c": rng.standard_normal(5).astype(np.float32)}),
          atol=1e-4)


@pytest.mark.parametrize("a,b", [([2, 3, 4, 5], [5, 6]), ([2, 3, 4, 5], [2, 3, 5, 2]), ([4], [4, 3]), ([3, 4], [4])])
def test_matmul(a, b):
    check(node_model("MatMul", [("a", F, a), ("b", F, b)], Y), atol=1e-4)


def test_reshape_transpose_flatten():
    check(node_model("Reshape", X, Y, inits={"shape": np.array([0, -1, 5], np.int64)}))
    check(node_model("Transpose", X, Y, {"perm": [0, 2, 3, 1]}))
    check(node_model("Transpose", X, Y))
    check(node_model("Flatten", X, Y, {"axis": 2}))


def test_concat_split_slice():
    check(node_model("Concat", [("a", F, [2, 3]), ("b", F, [2, 5])], Y, {"axis": 1}))
    check(node_model("Split", X, [("y0", F), ("y1", F)], {"axis": 3}, {"split": np.array([2, 3], np.int64)}))
    check(node_model("Split", X, [("y0", F), ("y1", F)], {"axis": 1, "num_outputs": 2}, opset=18))
    check(node_model("Slice", X, Y, inits={"starts": np.array([1, -3], np.int64), "ends": np.array([3, 100], np.int64),
                                            "axes": np.array([2, 3], np.int64)}))
    check(node_model("Slice", X, Y, inits={"starts": np.array([-1], np.int64),
                                            "ends": np.array([-(2**63)], np.int64),
                                            "axes": np.array([3], np.int64), "steps": np.array([-2], np.int64)}))


def test_gather_family():
    check(node_model("Gather", X, Y, {"axis": 1}, {"i": np.array([[0, -1], [2, 1]], np.int64)}))
    check(node_model("Gather", [("x", F, [10, 4]), ("i", I64, [2, 3])], Y))
    check(node_model("GatherElements", [("x", F, [3, 4])], Y, {"axis": 1},
                     {"i": np.array([[0, 3], [1, -1], [2, 2]], np.int64)}))


def test_squeeze_unsqueeze_expand_tile():
    check(node_model("Unsqueeze", X, Y, inits={"axes": np.array([0, -1], np.int64)}))
    check(node_model("Squeeze", [("x", F, [1, 3, 1, 5])], Y, inits={"axes": np.array([2], np.int64)}))
    check(node_model("Squeeze", [("x", F, [1, 3, 1, 5])], Y))
    check(node_model("Unsqueeze", X, Y, {"axes": [1]}, opset=11))
    check(node_model("Expand", [("x", F, [3, 1])], Y, inits={"s": np.array([2, 3, 4], np.int64)}))
    check(node_model("Tile", [("x", F, [2, 3])], Y, inits={"r": np.array([2, 2], np.int64)}))


@pytest.mark.parametrize("mode", ["constant", "reflect", "edge"])
def test_pad(mode):
    inits = {"pads": np.array([0, 0, 1, 2, 0, 0, 2, 1], np.int64)}
    if mode == "constant":
        inits["value"] = np.array(1.5, np.float32)
    check(node_model("Pad", X, Y, {"mode": mode}, inits))


@pytest.mark.parametrize("op_type", ["ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd",
                                     "ReduceL2", "ReduceLogSumExp", "ReduceSumSquare"])
@pytest.mark.parametrize("opset", [13, 18])
def test_reduce(op_type, opset):
    axes = [1, -1]
    if opset >= 18 or (op_type == "ReduceSum" and opset >= 13):
        model = node_model(op_type, X, Y, {"keepdims": 0}, {"axes": np.array(axes, np.int64)}, opset=opset)
    else:
        model = node_model(op_type, X, Y, {"keepdims": 0, "axes": axes}, opset=opset)
    check(model, atol=1e-4)


@pytest.mark.parametrize("op_type", ["ArgMax", "ArgMin"])
def test_arg_reduce(op_type):
    check(node_model(op_type, X, [("y", I64)], {"axis": 2, "keepdims": 1}))
    check(node_model(op_type, [("x", I64, [3, 4])], [("y", I64)], {"axis": 1, "keepdims": 0, "select_last_index": 1}))


def test_cast_where_constant_of_shape_range():
    check(node_model("Cast", X, [("y", I64)], {"to": I64}), feeds={"x": (feeds_for(node_model("Abs", X, Y))["x"] * 10)})
    check(node_model("Where", [("c", B, [3, 4]), ("a", F, [3, 4]), ("b", F, [4])], Y))
    check(node_model("ConstantOfShape", [], Y, {"value": numpy_helper.from_array(np.array([2.5], np.float32))},
                     {"s": np.array([2, 3], np.int64)}))
    check(node_model("Range", [], [("y", I64)], inits={"a": np.array(1, np.int64), "b": np.array(10, np.int64),
                                                     "c": np.array(3, np.int64)}))


def test_cumsum_einsum_trilu_onehot_depth_to_space():
    check(node_model("CumSum", X, Y, {"reverse": 1, "exclusive": 1}, {"axis": np.array(2, np.int64)}))
    check(node_model("Einsum", [("a", F, [2, 3, 4]), ("b", F, [2, 4, 5])], Y, {"equation": "bij,bjk->bik"}), atol=1e-4)
    check(node_model("Trilu", [("x", F, [4, 5])], Y, {"upper": 0}, {"k": np.array(1, np.int64)}))
    check(node_model("OneHot", [("i", I64, [3])], Y, {"axis": -1},
                     {"d": np.array(5, np.int64), "v": np.array([0.0, 2.0], np.float32)}),
          feeds={"i": np.array([0, 4, -1], np.int64)})
    check(node_model("DepthToSpace", [("x", F, [1, 8, 2, 3])], Y, {"blocksize": 2, "mode": "CRD"}))
    check(node_model("SpaceToDepth", [("x", F, [1, 2, 4, 6])], Y, {"blocksize": 2}))


def test_resize_via_reference_converter():
    model = node_model("Resize", [("x", F, [1, 2, 4, 4])], Y, {"mode": "nearest"},
                       {"roi": np.array([], np.float32), "scales": np.array([1, 1, 2, 2], np.float32)})
    check(model)


@pytest.mark.parametrize("size, attrs", [
    ([7, 8], {}),  # 2 -> 7 rows: a .5 tie at row 3 (half_pixel, round_prefer_floor)
    ([7, 8], {"nearest_mode": "round_prefer_ceil"}),
    ([5, 3], {"coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"}),
    ([3, 7], {"coordinate_transformation_mode": "align_corners"}),
    ([6, 5], {"coordinate_transformation_mode": "pytorch_half_pixel", "nearest_mode": "ceil"}),
])
def test_resize_nearest_to_sizes_samples_exactly(size, attrs):
    """Nearest resizes to sizes that are no integer factor pick the input index in exact
    arithmetic: TVM's float32 sampling took the other neighbour at ties."""
    inits = {"roi": np.array([], np.float32), "scales": np.array([], np.float32),
             "sizes": np.array([1, 2] + size, np.int64)}
    check(node_model("Resize", [("x", F, [1, 2, 2, 4])], Y, {"mode": "nearest", **attrs}, inits))


@pytest.mark.parametrize("opset, mode, scales", [
    (9, "nearest", [1, 1, 2, 2]),      # YOLOv3-era upsampling
    (9, "nearest", [1, 1, 1.5, 3]),
    (7, "nearest", [1.0, 1.0, 2.0, 3.0]),  # scales as an attribute
    (9, "linear", [1, 1, 2, 2]),
])
def test_upsample(opset, mode, scales):
    """Upsample (opsets 7-9), as old exports (keras2onnx, the ONNX model zoo) hold it."""
    if opset < 9:
        model = node_model("Upsample", [("x", F, [1, 2, 4, 4])], Y, {"mode": mode, "scales": scales}, opset=opset)
    else:
        model = node_model("Upsample", [("x", F, [1, 2, 4, 4])], Y, {"mode": mode},
                           {"scales": np.array(scales, np.float32)}, opset=opset)
    check(model)


def test_shape_arithmetic_with_dynamic_batch_is_evaluated_at_compile_time():
    # x: [N, 6] -> Reshape(x, Concat(Shape(x)[0:1], [2, 3])) -> [N, 2, 3]
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Gather", ["s", "zero"], ["n"], axis=0),
        helper.make_node("Unsqueeze", ["n", "axes0"], ["n1"]),
        helper.make_node("Concat", ["n1", "tail"], ["shape"], axis=0),
        helper.make_node("Reshape", ["x", "shape"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "dyn", [helper.make_tensor_value_info("x", F, ["N", 6])],
                              [helper.make_tensor_value_info("y", F, None)],
                              [numpy_helper.from_array(np.array(0, np.int64), "zero"),
                               numpy_helper.from_array(np.array([0], np.int64), "axes0"),
                               numpy_helper.from_array(np.array([2, 3], np.int64), "tail")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    compiled = lepton_opt.compile(model)
    assert compiled.inputs[0]["shape"] == ["N", 6]
    for n in (1, 5):
        x = np.arange(n * 6, dtype=np.float32).reshape(n, 6)
        np.testing.assert_array_equal(compiled.run({"x": x})["y"], x.reshape(n, 2, 3))


def declared(model, **shapes):
    """Declare static output shapes (what exporters and ONNX's own test models carry)."""
    for out in model.graph.output:
        if out.name in shapes:
            out.CopyFrom(helper.make_tensor_value_info(out.name, out.type.tensor_type.elem_type, shapes[out.name]))
    return model


def test_shape_parameters_computed_at_run_time():
    # Axes / repeats / shapes / split sizes fed as inputs: lowered against the declared output shape.
    check(declared(node_model("Unsqueeze", [*X, ("a", I64, [2])], Y), y=[1, 2, 3, 4, 5, 1]),
          feeds={"x": feeds_for(node_model("Abs", X, Y))["x"], "a": np.array([0, -1], np.int64)})
    check(declared(node_model("Squeeze", [("x", F, [1, 3, 1]), ("a", I64, [1])], Y), y=[1, 3]),
          feeds={"x": np.ones((1, 3, 1), np.float32), "a": np.array([2], np.int64)})
    check(declared(node_model("Tile", [("x", F, [2, 3]), ("r", I64, [2])], Y), y=[4, 3]),
          feeds={"x": np.arange(6, dtype=np.float32).reshape(2, 3), "r": np.array([2, 1], np.int64)})
    check(declared(node_model("Expand", [("x", F, [3, 1]), ("s", I64, [3])], Y), y=[2, 3, 4]),
          feeds={"x": np.arange(3, dtype=np.float32).reshape(3, 1), "s": np.array([2, 1, 4], np.int64)})
    check(declared(node_model("Split", [("x", F, [5, 2]), ("s", I64, [3])], [("y0", F), ("y1", F), ("y2", F)]),
                   y0=[2, 2], y1=[0, 2], y2=[3, 2]),
          feeds={"x": np.arange(10, dtype=np.float32).reshape(5, 2), "s": np.array([2, 0, 3], np.int64)})
    check(declared(node_model("OneHot", [("i", I64, [3]), ("d", I64, [1]), ("v", F, [2])], Y, {"axis": 0}),
                   y=[4, 3]),
          feeds={"i": np.array([0, 3, -1], np.int64), "d": np.array([4], np.int64),
                 "v": np.array([-1.0, 2.0], np.float32)})


def test_slice_and_cumsum_parameters_computed_at_run_time():
    x = np.arange(24, dtype=np.float32).reshape(4, 6)
    slice_inputs = [("x", F, [4, 6]), ("s", I64, [2]), ("e", I64, [2]), ("a", I64, [2]), ("t", I64, [2])]
    check(node_model("Slice", slice_inputs, Y),
          feeds={"x": x, "s": np.array([1, -1], np.int64), "e": np.array([100, 0], np.int64),
                 "a": np.array([0, 1], np.int64), "t": np.array([2, -2], np.int64)})
    for axis in (0, -1):
        check(node_model("CumSum", [("x", F, [4, 6]), ("a", I64, [1])], Y, {"exclusive": 1}),
              feeds={"x": x, "a": np.array([axis], np.int64)})


def test_range_bounds_computed_at_run_time():
    nodes = [helper.make_node("Squeeze", [n], [f"{n}0"]) for n in "abc"]
    nodes.append(helper.make_node("Range", ["a0", "b0", "c0"], ["y"]))
    graph = helper.make_graph(nodes, "range", [helper.make_tensor_value_info(n, F, [1]) for n in "abc"],
                              [helper.make_tensor_value_info("y", F, [4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    check(model, feeds={"a": np.array([1.5], np.float32), "b": np.array([-5.0], np.float32),
                        "c": np.array([-1.75], np.float32)})


@pytest.mark.parametrize("op_type,keepdims", [("ReduceSum", 0), ("ReduceL2", 1), ("ReduceLogSumExp", 0),
                                              ("ReduceMax", 1)])
def test_reduce_axes_computed_at_run_time(op_type, keepdims):
    # axes [2, 0] vs [1, 2] give outputs of the same shape: the axes are read at run time.
    model = node_model(op_type, [("x", F, [3, 2, 2]), ("a", I64, [1])], Y, {"keepdims": keepdims}, opset=18)
    x = feeds_for(node_model("Abs", [("x", F, [3, 2, 2])], Y))["x"]
    for axes in ([1], [-1], [0]):
        check(model, feeds={"x": x, "a": np.array(axes, np.int64)}, atol=1e-4)


def _attention_model(inputs, outputs, attrs):
    node = helper.make_node("Attention", [n for n, *_ in inputs], [n for n, *_ in outputs], **attrs)
    graph = helper.make_graph([node], "attn", [helper.make_tensor_value_info(n, t, s) for n, t, s in inputs],
                              [helper.make_tensor_value_info(n, t, s) for n, t, s in outputs])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)], ir_version=10)


def test_attention_kv_cache_bool_mask_causal_gqa():
    # 4 query heads over 2 KV heads, 2 cached steps, causal plus a boolean mask with fully masked rows.
    inputs = [("q", F, [1, 4, 3, 8]), ("k", F, [1, 2, 3, 8]), ("v", F, [1, 2, 3, 8]), ("m", B, [3, 5]),
              ("pk", F, [1, 2, 2, 8]), ("pv", F, [1, 2, 2, 8])]
    outputs = [("y", F, [1, 4, 3, 8]), ("present_k", F, [1, 2, 5, 8]), ("present_v", F, [1, 2, 5, 8]),
               ("qk", F, [1, 4, 3, 5])]
    model = _attention_model(inputs, outputs, {"is_causal": 1, "qk_matmul_output_mode": 3})
    feeds = feeds_for(model)
    feeds["m"][0] = False  # a fully masked query row gives 0
    check(model, feeds=feeds, atol=1e-4)


def test_attention_3d_softcap_float_mask():
    inputs = [("q", F, [2, 3, 8]), ("k", F, [2, 4, 8]), ("v", F, [2, 4, 8]), ("m", F, [3, 4])]
    model = _attention_model(inputs, [("y", F, [2, 3, 8])],
                             {"q_num_heads": 2, "kv_num_heads": 2, "softcap": 2.0, "scale": 0.3})
    check(model, atol=1e-4)


def test_reduce_max_of_minus_infinity_is_minus_infinity():
    model = node_model("ReduceMax", [("x", F, [2, 3])], Y, {"keepdims": 0}, {"a": np.array([1], np.int64)}, opset=18)
    check(model, feeds={"x": np.array([[-np.inf] * 3, [1.0, -np.inf, 2.0]], np.float32)})


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_softmax_cross_entropy_and_nll_loss(reduction):
    rng = np.random.default_rng(7)
    scores = rng.standard_normal((3, 5, 2)).astype(np.float32)
    labels = np.array([[0, 4], [2, -1], [1, 3]], np.int64)
    inputs = [("s", F, [3, 5, 2]), ("l", I64, [3, 2])]
    sce = node_model("SoftmaxCrossEntropyLoss", inputs, [("y", F), ("logp", F)],
                     {"reduction": reduction, "ignore_index": -1}, {"w": rng.uniform(0.5, 2, 5).astype(np.float32)})
    check(sce, feeds={"s": scores, "l": labels}, atol=1e-5)
    nll = node_model("NegativeLogLikelihoodLoss", inputs, Y, {"reduction": reduction, "ignore_index": -1})
    check(nll, feeds={"s": scores, "l": labels})


def test_resize_sizes_computed_at_run_time():
    model = declared(node_model("Resize", [("x", F, [1, 1, 2, 3]), ("r", F, [0]), ("s", F, [0]), ("z", I64, [4])], Y,
                                {"mode": "linear"}), y=[1, 1, 4, 6])
    feeds = {"x": np.arange(6, dtype=np.float32).reshape(1, 1, 2, 3), "r": np.zeros(0, np.float32),
             "s": np.zeros(0, np.float32), "z": np.array([1, 1, 4, 6], np.int64)}
    model.graph.node[0].input[1] = ""  # no roi
    model.graph.node[0].input[2] = ""  # no scales
    del model.graph.input[1:3]
    del feeds["r"], feeds["s"]
    check(model, feeds=feeds)


def test_layer_norm_mean_and_inv_std_dev_outputs():
    rng = np.random.default_rng(8)
    model = node_model("LayerNormalization", X, [("y", F), ("mean", F), ("inv", F)], {"axis": 2},
                       {"s": rng.standard_normal((4, 5)).astype(np.float32), "b": rng.standard_normal((4, 5)).astype(np.float32)})
    check(model, atol=1e-4)


def test_trilu_topk_cumprod_with_run_time_parameters():
    x = np.arange(1, 13, dtype=np.float32).reshape(3, 4) / 4
    for upper in (0, 1):
        check(node_model("Trilu", [("x", F, [3, 4]), ("k", I64, [])], Y, {"upper": upper}),
              feeds={"x": x, "k": np.array(-1, np.int64)})
    check(declared(node_model("TopK", [("x", F, [3, 4]), ("k", I64, [1])], [("v", F), ("i", I64)], {"axis": 1}),
                   v=[3, 2], i=[3, 2]), feeds={"x": x, "k": np.array([2], np.int64)})
    check(node_model("CumProd", [("x", F, [3, 4]), ("a", I64, [])], Y, {"reverse": 1}, opset=26),
          feeds={"x": x, "a": np.array(1, np.int64)})


@pytest.mark.parametrize("mode", ["constant", "reflect", "wrap"])
def test_pad_with_run_time_pads(mode):
    model = declared(node_model("Pad", [("x", F, [3, 4]), ("p", I64, [4])], Y, {"mode": mode}), y=[4, 7])
    check(model, feeds={"x": np.arange(12, dtype=np.float32).reshape(3, 4), "p": np.array([1, 2, 0, 1], np.int64)})


def test_constant_of_shape_and_center_crop_pad_with_run_time_shapes():
    check(declared(node_model("ConstantOfShape", [("s", I64, [2])], Y,
                              {"value": numpy_helper.from_array(np.array([1.5], np.float32))}), y=[2, 3]),
          feeds={"s": np.array([2, 3], np.int64)})
    check(declared(node_model("CenterCropPad", [("x", F, [5, 4]), ("s", I64, [2])], Y, opset=18), y=[2, 7]),
          feeds={"x": np.arange(20, dtype=np.float32).reshape(5, 4), "s": np.array([2, 7], np.int64)})


def test_legacy_broadcast_prelu_per_channel_and_float_mod_by_infinity():
    model = node_model("Add", [("a", F, [2, 3, 4]), ("b", F, [3])], Y, {"broadcast": 1, "axis": 1}, opset=6)
    a, b = np.ones((2, 3, 4), np.float32), np.array([1, 2, 3], np.float32)
    np.testing.assert_array_equal(lepton_opt.compile(model).run({"a": a, "b": b})["y"], a + b.reshape(3, 1))
    model = node_model("PRelu", [("x", F, [2, 3, 4])], Y, inits={"s": np.array([0.1, 0.2, 0.3], np.float32)}, opset=6)
    x = feeds_for(model)["x"]
    np.testing.assert_allclose(lepton_opt.compile(model).run({"x": x})["y"],
                               np.where(x < 0, x * np.array([0.1, 0.2, 0.3], np.float32).reshape(3, 1), x), rtol=1e-6)
    inf = np.float32(np.inf)
    for fmod in (0, 1):
        check(node_model("Mod", [("a", F, [4]), ("b", F, [4])], Y, {"fmod": fmod}, opset=28),
              feeds={"a": np.array([1.5, -1.5, 0.0, 2.0], np.float32), "b": np.array([inf, inf, -inf, 3.0], np.float32)})


def test_rms_norm_all_axes_and_batchnorm_with_run_time_parameters():
    check(node_model("RMSNormalization", [("x", F, [2, 3]), ("s", F, [2, 3])], Y, {"axis": 0}, opset=23), atol=1e-5)
    inputs = [("x", F, [2, 3, 4]), ("s", F, [3]), ("b", F, [3]), ("m", F, [3]), ("v", F, [3])]
    feeds = feeds_for(node_model("BatchNormalization", inputs, Y))
    feeds["v"] = np.abs(feeds["v"]) + 0.5
    check(node_model("BatchNormalization", inputs, Y), feeds=feeds, atol=1e-5)


def test_dropout_with_run_time_training_mode_is_rejected():
    model = node_model("Dropout", [("x", F, [3]), ("r", F, []), ("t", B, [])], Y)
    with pytest.raises(lepton_opt.LeptonError, match="training_mode"):
        lepton_opt.compile(model, fallback=False)  # alone it would run in onnxruntime


def test_cosh_eyelike_and_fp16_attention_with_cache():
    check(node_model("Cosh", [("x", F, [3, 4])], Y))
    check(node_model("EyeLike", [("x", F, [3, 4])], [("y", I64)], {"k": 1, "dtype": I64}))
    H = TensorProto.FLOAT16
    inputs = [("q", H, [1, 2, 3, 8]), ("k", H, [1, 2, 3, 8]), ("v", H, [1, 2, 3, 8]),
              ("pk", H, [1, 2, 2, 8]), ("pv", H, [1, 2, 2, 8])]
    model = _attention_model(inputs, [("y", H, [1, 2, 3, 8]), ("present_k", H, [1, 2, 5, 8]),
                                      ("present_v", H, [1, 2, 5, 8])], {"is_causal": 1})
    model.graph.node[0].input.insert(3, "")  # no attn_mask
    rng = np.random.default_rng(9)
    feeds = {n: rng.standard_normal(s).astype(np.float16) for n, _, s in inputs}
    check(model, feeds=feeds, atol=2e-3, rtol=2e-3)


@pytest.mark.parametrize("interleaved", [0, 1])
def test_rotary_embedding(interleaved):
    rng = np.random.default_rng(10)
    inputs = [("x", F, [2, 3, 8]), ("c", F, [2, 3, 2]), ("s", F, [2, 3, 2])]
    model = node_model("RotaryEmbedding", inputs, Y, {"interleaved": interleaved, "num_heads": 2,
                                                      "rotary_embedding_dim": 4}, opset=23)
    check(model, feeds={n: rng.standard_normal(sh).astype(np.float32) for n, _, sh in inputs})


def test_resize_with_axes_attribute():
    model = node_model("Resize", [("x", F, [1, 1, 2, 3])], Y, {"mode": "nearest", "axes": [3, 2]},
                       {"roi": np.array([], np.float32), "scales": np.array([2, 3], np.float32)}, opset=19)
    check(declared(model, y=[1, 1, 6, 6]))


def test_lp_normalization_of_zero_vector_and_roialign_max_rejected():
    x = np.array([[0.0, 3.0], [0.0, 4.0]], np.float32)
    check(node_model("LpNormalization", [("x", F, [2, 2])], Y, {"axis": 0}), feeds={"x": x})
    model = node_model("RoiAlign", [("x", F, [1, 1, 4, 4]), ("r", F, [1, 4]), ("b", I64, [1])], Y, {"mode": "max"})
    with pytest.raises(lepton_opt.LeptonError, match="RoiAlign mode 'max'"):
        lepton_opt.compile(model, fallback=False)  # alone it would run in onnxruntime


@pytest.mark.parametrize("output_shape", [None, [1, 1, 5, 5], "input"])
def test_max_unpool(output_shape):
    """MaxPool's indices scattered back (our converter: TVM's reference one fails on any
    output_shape); an output_shape computed at run time is a one-line error naming it."""
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 2, 2]),
              helper.make_tensor_value_info("i", TensorProto.INT64, [1, 1, 2, 2])]
    inits, names = [], ["x", "i"]
    if isinstance(output_shape, list):
        inits.append(numpy_helper.from_array(np.array(output_shape, np.int64), "output_shape"))
    if output_shape == "input":
        inputs.append(helper.make_tensor_value_info("output_shape", TensorProto.INT64, [4]))
    if output_shape is not None:
        names.append("output_shape")
    node = helper.make_node("MaxUnpool", names, ["y"], name="unpool", kernel_shape=[2, 2], strides=[2, 2])
    graph = helper.make_graph([node], "g", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])
    if output_shape == "input":
        with pytest.raises(lepton_opt.LeptonError) as info:
            lepton_opt.compile(model, fallback=False)  # alone it would run in onnxruntime
        message = str(info.value)
        assert "MaxUnpool node 'unpool': output_shape (input 2) must be a constant" in message, message
        assert "Error:" not in message and "\n" not in message
        return
    feeds = {"x": np.array([[[[1.0, 2.0], [3.0, 4.0]]]], np.float32),
             "i": np.array([[[[0, 3], [10, 15]]]], np.int64)}
    got = lepton_opt.compile(model).run(feeds)["y"]
    ref = ort_run(model, feeds)["y"]
    assert got.shape == ref.shape == ((1, 1, 5, 5) if output_shape else (1, 1, 4, 4))
    np.testing.assert_array_equal(got, ref)



def test_relu_keeps_nan_as_onnxruntime_does():
    """max(x, 0) in LLVM drops a NaN (maxnum); onnxruntime's Relu passes it through, and a NaN
    turned into 0 would hide a broken input or weight from --verify."""
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "relu",
                              [helper.make_tensor_value_info("x", F, [64])], [helper.make_tensor_value_info("y", F, [64])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = np.linspace(-2, 2, 64).astype(np.float32)
    x[[3, 40]] = np.nan
    got = lepton_opt.compile(model).run({"x": x})["y"]
    np.testing.assert_array_equal(got, ort_run(model, {"x": x})["y"])
    assert np.isnan(got[[3, 40]]).all()


@pytest.mark.parametrize("parts, window, onesided", [(1, "hann", 1), (1, None, 0), (2, "ones", 1)])
def test_stft_as_framed_matmul(parts, window, onesided):
    """torch.stft under the dynamo exporter: frames by one gather, a DFT basis with the window
    folded in, one matmul; against onnxruntime's FFT."""
    rng = np.random.default_rng(parts)
    size, step, length = 16, 4, 70
    inits = {"step": np.array(step, np.int64)}
    inputs = ["x", "step"]
    if window == "hann":
        inits["w"] = np.hanning(size).astype(np.float32)
        inputs.append("w")
    elif window == "ones":
        inits["w"] = np.ones(size, np.float32)
        inputs.append("w")
    else:
        inits["n"] = np.array(size, np.int64)
        inputs += ["", "n"]
    graph = helper.make_graph([helper.make_node("STFT", inputs, ["y"], onesided=onesided)], "stft",
                              [helper.make_tensor_value_info("x", F, [2, length, parts])],
                              [helper.make_tensor_value_info("y", F, None)],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    x = rng.standard_normal((2, length, parts)).astype(np.float32)
    got = lepton_opt.compile(model).run({"x": x})["y"]
    ref = ort_run(model, {"x": x})["y"]
    assert got.shape == ref.shape == (2, (length - size) // step + 1, size // 2 + 1 if onesided else size, 2)
    np.testing.assert_allclose(got, ref, atol=1e-4 * np.abs(ref).max(), rtol=0)


@pytest.mark.parametrize("opset, dims, axis, length, inverse, onesided", [
    (17, [2, 64, 1], 1, None, 0, 1),     # torch.fft.rfft over time
    (17, [2, 48, 2], 1, 64, 0, 0),       # complex, zero-padded to 64
    (17, [3, 40, 5, 2], 1, 32, 1, 0),    # inverse, cut to 32, along a middle axis
    (20, [2, 6, 50, 1], -2, None, 0, 1),  # opset 20: axis as an input (default -2)
    (20, [2, 20, 6, 2], 1, None, 1, 0),
])
def test_dft(opset, dims, axis, length, inverse, onesided):
    """DFT (torch.fft in dynamo exports) as basis matmuls, against onnxruntime."""
    rng = np.random.default_rng(9)
    inits, inputs = {}, ["x"]
    if length is not None:
        inits["n"] = np.array(length, np.int64)
    inputs.append("n" if length is not None else "")
    attrs = {"inverse": inverse, "onesided": onesided}
    if opset >= 20:
        inits["axis"] = np.array(axis, np.int64)
        inputs.append("axis")
    else:
        attrs["axis"] = axis
    while inputs and inputs[-1] == "":
        inputs.pop()
    graph = helper.make_graph([helper.make_node("DFT", inputs, ["y"], **attrs)], "dft",
                              [helper.make_tensor_value_info("x", F, dims)],
                              [helper.make_tensor_value_info("y", F, None)],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=9)
    x = rng.standard_normal(dims).astype(np.float32)
    got = lepton_opt.compile(model).run({"x": x})["y"]
    ref = ort_run(model, {"x": x})["y"]
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, atol=1e-4 * np.abs(ref).max(), rtol=0)
