"""onnxruntime contrib ops rewritten into standard ONNX (passes/contrib.py): each case is one
com.microsoft node as onnxruntime's optimizers and QOperator quantizer leave them in saved
models; the rewritten model must match onnxruntime on the original, hold no com.microsoft node,
and compile without an onnxruntime segment."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import lepton_opt
from lepton_opt.targets.artifact import PartitionedModel
from tests.models import ort_run

F, U8 = TensorProto.FLOAT, TensorProto.UINT8
RNG = np.random.default_rng(0)


def _model(node, inputs, outputs, inits=(), opset=17):
    graph = helper.make_graph([node], "contrib", inputs, outputs, list(inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid("com.microsoft", 1)])


def _f(name, shape):
    return helper.make_tensor_value_info(name, F, shape)


def _init(name, array):
    return numpy_helper.from_array(np.asarray(array), name)


def _q(name, array, scale, zp):
    return numpy_helper.from_array(np.clip(np.round(array / scale) + zp, 0, 255).astype(np.uint8), name)


def _scales(prefix, scale, zp):
    return [_init(f"{prefix}_s", np.float32(scale)), _init(f"{prefix}_zp", np.uint8(zp))]


def yq_like(name):
    return helper.make_tensor_value_info(name, U8, None)


def case(name):
    x = RNG.standard_normal((2, 3, 6, 6)).astype(np.float32)
    m = RNG.standard_normal((2, 4, 8)).astype(np.float32)
    feeds = {"x": x}
    if name == "FusedConv":
        node = helper.make_node("FusedConv", ["x", "w", "b"], ["y"], domain="com.microsoft", activation="LeakyRelu",
                                activation_params=[0.2], kernel_shape=[3, 3], pads=[1, 1, 1, 1])
        return _model(node, [_f("x", [2, 3, 6, 6])], [_f("y", None)],
                      [_init("w", RNG.standard_normal((5, 3, 3, 3)).astype(np.float32)),
                       _init("b", RNG.standard_normal(5).astype(np.float32))]), feeds
    if name == "FusedConv_clip_sum":
        node = helper.make_node("FusedConv", ["x", "w", "b", "z"], ["y"], domain="com.microsoft", activation="Clip",
                                activation_params=[-0.5, 0.5], kernel_shape=[1, 1])
        feeds["z"] = RNG.standard_normal((2, 4, 6, 6)).astype(np.float32)
        return _model(node, [_f("x", [2, 3, 6, 6]), _f("z", [2, 4, 6, 6])], [_f("y", None)],
                      [_init("w", RNG.standard_normal((4, 3, 1, 1)).astype(np.float32)),
                       _init("b", RNG.standard_normal(4).astype(np.float32))]), feeds
    if name == "FusedMatMul":
        node = helper.make_node("FusedMatMul", ["m", "w"], ["y"], domain="com.microsoft", alpha=0.5, transB=1)
        return _model(node, [_f("m", [2, 4, 8])], [_f("y", None)],
                      [_init("w", RNG.standard_normal((6, 8)).astype(np.float32))]), {"m": m}
    if name in ("Gelu", "QuickGelu"):
        node = helper.make_node(name, ["m"], ["y"], domain="com.microsoft")
        return _model(node, [_f("m", [2, 4, 8])], [_f("y", None)]), {"m": m}
    if name in ("FastGelu", "BiasGelu"):
        node = helper.make_node(name, ["m", "bias"], ["y"], domain="com.microsoft")
        return _model(node, [_f("m", [2, 4, 8])], [_f("y", None)],
                      [_init("bias", RNG.standard_normal(8).astype(np.float32))]), {"m": m}
    if name == "SkipLayerNormalization":
        node = helper.make_node(name, ["m", "skip", "gamma", "beta", "bias"], ["y", "", "", "sum"],
                                domain="com.microsoft", epsilon=1e-5)
        feeds = {"m": m, "skip": RNG.standard_normal((2, 4, 8)).astype(np.float32)}
        return _model(node, [_f("m", [2, 4, 8]), _f("skip", [2, 4, 8])], [_f("y", None), _f("sum", None)],
                      [_init(n, RNG.standard_normal(8).astype(np.float32)) for n in ("gamma", "beta", "bias")]), feeds
    if name == "SkipLayerNormalization_op14":  # before LayerNormalization existed: spelled out
        model, feeds = case("SkipLayerNormalization")
        model.opset_import[0].version = 14
        return model, feeds
    if name == "SkipSimplifiedLayerNormalization":
        node = helper.make_node(name, ["m", "skip", "gamma", "bias"], ["y", "", "", "sum"], domain="com.microsoft",
                                epsilon=1e-6)
        feeds = {"m": m, "skip": RNG.standard_normal((2, 4, 8)).astype(np.float32)}
        return _model(node, [_f("m", [2, 4, 8]), _f("skip", [2, 4, 8])], [_f("y", None), _f("sum", None)],
                      [_init(n, RNG.standard_normal(8).astype(np.float32)) for n in ("gamma", "bias")]), feeds
    if name == "SimplifiedLayerNormalization":  # onnxruntime's RMS norm, in the ONNX domain
        node = helper.make_node(name, ["m", "scale"], ["y"], epsilon=1e-6, axis=-1)
        return _model(node, [_f("m", [2, 4, 8])], [_f("y", None)],
                      [_init("scale", RNG.standard_normal(8).astype(np.float32))]), {"m": m}
    if name == "EmbedLayerNormalization":
        ids = RNG.integers(0, 30, (2, 5)).astype(np.int32)
        node = helper.make_node(name, ["ids", "segments", "word", "position", "segment", "gamma", "beta", "mask"],
                                ["y", "mask_index"], domain="com.microsoft", epsilon=1e-12)
        feeds = {"ids": ids, "segments": (ids % 2).astype(np.int32),
                 "mask": np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], np.int32)}
        inputs = [helper.make_tensor_value_info(n, TensorProto.INT32, [2, 5]) for n in ("ids", "segments", "mask")]
        outputs = [_f("y", None), helper.make_tensor_value_info("mask_index", TensorProto.INT32, None)]
        inits = [_init("word", RNG.standard_normal((30, 8)).astype(np.float32)),
                 _init("position", RNG.standard_normal((16, 8)).astype(np.float32)),
                 _init("segment", RNG.standard_normal((2, 8)).astype(np.float32)),
                 _init("gamma", RNG.standard_normal(8).astype(np.float32)),
                 _init("beta", RNG.standard_normal(8).astype(np.float32))]
        return _model(node, inputs, outputs, inits, opset=14), feeds
    if name.startswith("Attention"):
        # onnxruntime's BERT/GPT attention: packed QKV weights, 2 heads, masks in its formats
        variant = name.split("_", 1)[1]
        inputs, feeds = [_f("m", [2, 4, 8])], {"m": m}
        node_inputs = ["m", "w", "b"]
        attrs = {"num_heads": 2}
        if variant == "raw_mask":
            feeds["mask"] = np.array([[1, 1, 1, 1], [1, 1, 0, 0]], np.int32)
        elif variant == "lengths":
            feeds["mask"] = np.array([4, 2], np.int32)
        elif variant == "causal":
            attrs["unidirectional"] = 1
        if "mask" in feeds:
            node_inputs.append("mask")
            inputs.append(helper.make_tensor_value_info("mask", TensorProto.INT32, list(feeds["mask"].shape)))
        node = helper.make_node("Attention", node_inputs, ["y"], domain="com.microsoft", **attrs)
        return _model(node, inputs, [_f("y", None)],
                      [_init("w", (RNG.standard_normal((8, 24)) * 0.3).astype(np.float32)),
                       _init("b", RNG.standard_normal(24).astype(np.float32))], opset=14), feeds
    if name.startswith("QGemm"):  # QOperator Gemm: uint8 activations, int8 per-channel weights
        opset = int(name.rsplit("op", 1)[1])
        x8 = RNG.integers(0, 255, (3, 16)).astype(np.uint8)
        node = helper.make_node("QGemm", ["a", "a_s", "a_zp", "b", "b_s", "b_zp", "c", "y_s", "y_zp"], ["y"],
                                domain="com.microsoft", transB=1, alpha=1.0)
        inits = ([_init("a_s", np.float32(0.02)), _init("a_zp", np.uint8(120)),
                  _init("b", RNG.integers(-100, 100, (6, 16)).astype(np.int8)),
                  _init("b_s", (RNG.random(6) * 0.01 + 0.005).astype(np.float32)), _init("b_zp", np.zeros(6, np.int8)),
                  _init("c", RNG.integers(-2000, 2000, 6).astype(np.int32))] + _scales("y", 0.05, 128))
        return _model(node, [helper.make_tensor_value_info("a", U8, [3, 16])], [yq_like("y")], inits, opset=opset), {"a": x8}
    # QOperator-format int8 (uint8 activations with scales and zero points)
    xq = {"xq": np.clip(np.round(x / 0.05) + 128, 0, 255).astype(np.uint8)}
    uq = helper.make_tensor_value_info("xq", U8, [2, 3, 6, 6])
    yq = helper.make_tensor_value_info("y", U8, None)
    if name in ("QLinearAdd", "QLinearMul"):
        node = helper.make_node(name, ["xq", "x_s", "x_zp", "bq", "b_s", "b_zp", "y_s", "y_zp"], ["y"],
                                domain="com.microsoft")
        inits = (_scales("x", 0.05, 128) + [_q("bq", RNG.standard_normal((1, 3, 1, 1)), 0.04, 120)]
                 + _scales("b", 0.04, 120) + _scales("y", 0.08, 125))
        return _model(node, [uq], [yq], inits), xq
    if name in ("QLinearSigmoid", "QLinearLeakyRelu", "QLinearGlobalAveragePool", "QLinearAveragePool"):
        attrs = {"QLinearLeakyRelu": {"alpha": 0.1}, "QLinearAveragePool": {"kernel_shape": [2, 2], "strides": [2, 2]}}
        node = helper.make_node(name, ["xq", "x_s", "x_zp", "y_s", "y_zp"], ["y"], domain="com.microsoft",
                                **attrs.get(name, {}))
        return _model(node, [uq], [yq], _scales("x", 0.05, 128) + _scales("y", 0.01 if "Sigmoid" in name else 0.03, 100)), xq
    if name == "QLinearConcat":
        node = helper.make_node(name, ["y_s", "y_zp", "xq", "x_s", "x_zp", "bq", "b_s", "b_zp"], ["y"],
                                domain="com.microsoft", axis=1)
        inits = (_scales("y", 0.06, 128) + _scales("x", 0.05, 128)
                 + [_q("bq", RNG.standard_normal((2, 2, 6, 6)), 0.04, 120)] + _scales("b", 0.04, 120))
        return _model(node, [uq], [yq], inits), xq
    raise KeyError(name)


CASES = ["FusedConv", "FusedConv_clip_sum", "FusedMatMul", "Gelu", "QuickGelu", "FastGelu", "BiasGelu",
         "SkipLayerNormalization", "SkipLayerNormalization_op14", "SkipSimplifiedLayerNormalization",
         "SimplifiedLayerNormalization", "EmbedLayerNormalization", "Attention_nomask", "Attention_raw_mask",
         "Attention_lengths", "Attention_causal", "QGemm_op11", "QGemm_op13", "QLinearAdd", "QLinearMul", "QLinearSigmoid", "QLinearLeakyRelu",
         "QLinearGlobalAveragePool", "QLinearAveragePool", "QLinearConcat"]


@pytest.mark.parametrize("name", CASES)
def test_contrib_op_is_rewritten_and_compiles(name):
    model, feeds = case(name)
    expected = ort_run(model, feeds)
    rewritten = lepton_opt.optimize(model, passes=["expand-contrib-ops"]).model
    assert not [n.op_type for n in rewritten.graph.node if n.domain == "com.microsoft"
                or n.op_type == "SimplifiedLayerNormalization"]
    assert [o.name for o in rewritten.graph.output] == [o.name for o in model.graph.output]
    quantized = expected[model.graph.output[0].name].dtype == np.uint8
    # float: rounding only; uint8: a value on a rounding boundary may land one step away
    tol = {"atol": 1, "rtol": 0} if quantized else {"atol": 1e-5, "rtol": 1e-4}
    for got in (ort_run(rewritten, feeds), lepton_opt.compile(model).run(feeds)):
        for key, ref in expected.items():
            np.testing.assert_allclose(got[key].astype(np.float64), ref.astype(np.float64), err_msg=key, **tol)
    assert not isinstance(lepton_opt.compile(model), PartitionedModel)


def test_variant_not_covered_is_left_to_onnxruntime():
    # SkipLayerNormalization's mean output (training) in use: not rewritten; compile runs it in onnxruntime.
    model, feeds = case("SkipLayerNormalization")
    model.graph.node[0].output[1] = "mean"
    model.graph.output.append(_f("mean", None))
    rewritten = lepton_opt.optimize(model, passes=["expand-contrib-ops"]).model
    assert [n.op_type for n in rewritten.graph.node] == ["SkipLayerNormalization"]


def test_float16_model_gets_float16_constants():
    """onnxruntime's float16 converter leaves BiasGelu/FastGelu/SkipLayerNormalization in float16:
    the expansion's constants follow the input's type (float32 ones made the model invalid and the
    pass was rolled back, leaving the ops to onnxruntime)."""
    f16 = TensorProto.FLOAT16
    nodes = [helper.make_node("FastGelu", ["m", "bias"], ["g"], domain="com.microsoft"),
             helper.make_node("SkipLayerNormalization", ["g", "m", "gamma", "beta"], ["y"], domain="com.microsoft",
                              epsilon=1e-5)]
    params = {n: RNG.standard_normal(8).astype(np.float16) for n in ("bias", "gamma", "beta")}
    graph = helper.make_graph(nodes, "f16", [helper.make_tensor_value_info("m", f16, [2, 4, 8])],
                              [helper.make_tensor_value_info("y", f16, [2, 4, 8])],
                              [_init(n, v) for n, v in params.items()])
    # no com.microsoft opset import, as onnxruntime's transformers optimizer writes them
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    rewritten = lepton_opt.optimize(model, passes=["expand-contrib-ops"])
    assert not rewritten.warnings, rewritten.warnings
    assert not [n for n in rewritten.model.graph.node if n.domain == "com.microsoft"]
    onnx.checker.check_model(rewritten.model, full_check=True)
    m = RNG.standard_normal((2, 4, 8)).astype(np.float16)
    # the same graph in float32 is the reference (onnxruntime has no float16 CPU kernels for these)
    as_f32 = onnx.ModelProto()
    as_f32.CopyFrom(model)
    for t in as_f32.graph.initializer:
        t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float32), t.name))
    for v in list(as_f32.graph.input) + list(as_f32.graph.output):
        v.type.tensor_type.elem_type = F
    as_f32.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    expected = ort_run(as_f32, {"m": m.astype(np.float32)})["y"]
    compiled = lepton_opt.compile(model)
    assert not isinstance(compiled, PartitionedModel)
    np.testing.assert_allclose(compiled.run({"m": m})["y"].astype(np.float32), expected, atol=3e-2, rtol=3e-2)


def _pack(values: np.ndarray, bits: int) -> np.ndarray:
    """Fields of ``bits`` bits packed into bytes along the last axis, lowest bits first."""
    per = 8 // bits
    values = np.asarray(values, np.uint8)
    pad = -values.shape[-1] % per
    values = np.concatenate([values, np.zeros((*values.shape[:-1], pad), np.uint8)], axis=-1)
    fields = values.reshape(*values.shape[:-1], -1, per)
    return np.bitwise_or.reduce(fields << (np.arange(per, dtype=np.uint8) * bits), axis=-1).astype(np.uint8)


# MatMulNBits variants as onnxruntime's weight-only quantizers write them (RTN/HQQ/GPTQ).
NBITS_CASES = {
    "q4_packed_zero_points": dict(bits=4, zp="packed"),
    "q4_symmetric": dict(bits=4, zp=None),
    "q4_k_not_whole_blocks_bias": dict(bits=4, zp="packed", k=40, bias=True),
    "q4_float_zero_points": dict(bits=4, zp="float"),
    "q8": dict(bits=8, zp="packed"),
    "q2": dict(bits=2, zp="packed"),
    "q4_float16": dict(bits=4, zp="packed", dtype=np.float16),
}


@pytest.mark.parametrize("name", sorted(NBITS_CASES))
def test_matmul_nbits_becomes_a_matmul(name):
    spec = NBITS_CASES[name]
    bits, k, n, block = spec["bits"], spec.get("k", 64), 24, 16
    dtype = spec.get("dtype", np.float32)
    ttype = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    blocks = -(-k // block)
    q = RNG.integers(0, 1 << bits, (n, blocks * block))
    inits = [_init("b", _pack(q, bits).reshape(n, blocks, -1)),
             _init("scales", (RNG.random(n * blocks) * 0.1 + 0.01).astype(dtype))]
    names = ["a", "b", "scales"]
    if spec["zp"] == "packed":
        inits.append(_init("zp", _pack(RNG.integers(0, 1 << bits, (n, blocks)), bits).reshape(-1)))
        names.append("zp")
    elif spec["zp"] == "float":
        inits.append(_init("zp", (RNG.random(n * blocks) * (1 << bits)).astype(dtype)))
        names.append("zp")
    if spec.get("bias"):
        names += [""] * (5 - len(names)) + ["bias"]
        inits.append(_init("bias", RNG.standard_normal(n).astype(dtype)))
    node = helper.make_node("MatMulNBits", names, ["y"], domain="com.microsoft", K=k, N=n, bits=bits,
                            block_size=block)
    model = _model(node, [helper.make_tensor_value_info("a", ttype, [2, 3, k])],
                   [helper.make_tensor_value_info("y", ttype, None)], inits, opset=21)
    feeds = {"a": RNG.standard_normal((2, 3, k)).astype(dtype)}
    expected = ort_run(model, feeds)["y"]
    rewritten = lepton_opt.optimize(model, passes=["expand-contrib-ops"]).model
    assert "MatMulNBits" not in [n.op_type for n in rewritten.graph.node]
    compiled = lepton_opt.compile(model)
    assert not isinstance(compiled, PartitionedModel)
    tol = 2e-2 if dtype == np.float16 else 1e-4
    for got in (ort_run(rewritten, feeds)["y"], compiled.run(feeds)["y"]):
        np.testing.assert_allclose(got.astype(np.float32), expected.astype(np.float32), rtol=tol, atol=tol)


@pytest.mark.parametrize("form", ["uint8_packed", "uint8_packed_zero_points", "int4", "uint4_zero_points"])
def test_gather_block_quantized_becomes_a_gather(form):
    rows, cols, block = 10, 32, 16
    blocks = cols // block
    if form.startswith("uint8"):
        q = RNG.integers(0, 16, (rows, cols))
        inits = [_init("data", _pack(q, 4))]
    else:
        signed = form == "int4"
        q = RNG.integers(-8 if signed else 0, 8 if signed else 16, (rows, cols))
        inits = [helper.make_tensor("data", TensorProto.INT4 if signed else TensorProto.UINT4, [rows, cols],
                                    q.flatten().tolist())]
    inits.append(_init("scales", (RNG.random((rows, blocks)) * 0.1 + 0.01).astype(np.float32)))
    names = ["data", "ids", "scales"]
    if form == "uint8_packed_zero_points":
        inits.append(_init("zp", _pack(RNG.integers(0, 16, (rows, blocks)), 4)))
        names.append("zp")
    elif form == "uint4_zero_points":
        inits.append(helper.make_tensor("zp", TensorProto.UINT4, [rows, blocks],
                                        RNG.integers(0, 16, rows * blocks).tolist()))
        names.append("zp")
    node = helper.make_node("GatherBlockQuantized", names, ["y"], domain="com.microsoft", gather_axis=0,
                            quantize_axis=1, block_size=block, bits=4)
    model = _model(node, [helper.make_tensor_value_info("ids", TensorProto.INT64, [2, 5])], [_f("y", None)],
                   inits, opset=21)
    feeds = {"ids": RNG.integers(0, rows, (2, 5))}
    expected = ort_run(model, feeds)["y"]
    compiled = lepton_opt.compile(model)
    assert not isinstance(compiled, PartitionedModel)
    np.testing.assert_allclose(compiled.run(feeds)["y"], expected, rtol=1e-6, atol=1e-6)
