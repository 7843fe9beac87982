"""Quantized models compile to integer kernels and match onnxruntime running the same model.

The QDQ models come from onnxruntime's own quantizer (``quantize_static`` / ``quantize_dynamic``),
the files users bring. Numerics: lepton-opt's build against onnxruntime executing the QDQ model
with graph optimizations off (the ONNX semantics: dequantize, float op, quantize). Structure:
the lowered module computes the heavy ops on int8/uint8 data (no float convolution or matmul
is left) and, on a host with AVX512-VNNI, the machine code uses ``vpdpbusd``.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import tvm
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic,
                                      quantize_static)

import lepton_opt
from lepton_opt.targets import int8
from lepton_opt.targets.build import resolve_target
from lepton_opt.targets.compile import lower_model
from tests.models import mobilenet_block_cnn, ort_run, random_inputs, resnet_cnn, transformer_layer


class _Feeds(CalibrationDataReader):
    def __init__(self, model: onnx.ModelProto, count: int):
        self._it = iter([random_inputs(model, seed=100 + i) for i in range(count)])

    def get_next(self):
        return next(self._it, None)


def _ort_static(model, tmp_path, activation=QuantType.QUInt8, **options) -> onnx.ModelProto:
    src, dst = tmp_path / "float.onnx", tmp_path / "qdq.onnx"
    onnx.save(model, src)
    quantize_static(str(src), str(dst), _Feeds(model, 8), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=activation, weight_type=QuantType.QInt8, **options)
    return onnx.load(dst)


def _output_step(qdq: onnx.ModelProto, output: str) -> float:
    """The scale of the DequantizeLinear that produces ``output`` (one quantization step)."""
    inits = {t.name: numpy_helper.to_array(t) for t in qdq.graph.initializer}
    node = next(n for n in qdq.graph.node if output in n.output)
    assert node.op_type == "DequantizeLinear"
    return float(inits[node.input[1]].max())


def _compare(qdq: onnx.ModelProto, seeds=(0, 1), steps: float = 1.0) -> lepton_opt.CompiledModel:
    compiled = lepton_opt.compile(qdq)
    for seed in seeds:
        feeds = random_inputs(qdq, seed=seed)
        expected = ort_run(qdq, feeds)
        got = compiled.run(feeds)
        for name, ref in expected.items():
            step = _output_step(qdq, name)
            # Exact integer sums; the float epilogue may round a value across a quantization
            # boundary differently from the reference's float convolution: one step at most
            # per layer, which rarely survives to the output.
            assert np.abs(got[name] - ref).max() <= steps * step + 1e-6, (name, np.abs(got[name] - ref).max(), step)
    return compiled


def _lowered_text(model: onnx.ModelProto) -> str:
    return lower_model(lepton_opt.load(model)).mod.script()


def _calls(text: str, kernel: str) -> int:
    return text.count(f"R.call_tir(cls.{kernel}")


def _assert_integer_compute(model: onnx.ModelProto, convs: int = 0, dense: int = 0) -> None:
    text = _lowered_text(model)
    assert _calls(text, "int8_conv") == convs and _calls(text, "int8_dense") == dense, text
    # No float convolution or matmul is left: the float DequantizeLinear paths were dropped.
    assert 'R.nn.conv2d(' not in text or 'out_dtype="int32"' in text
    assert "R.matmul(" not in text


def _asm(compiled) -> str:
    return compiled._executable.mod.imports[0].inspect_source("asm")


def _host_has_vnni() -> bool:
    return int8.has_vnni(resolve_target("llvm").tvm_target())


@pytest.mark.parametrize("activation", [QuantType.QUInt8, QuantType.QInt8])
def test_ort_quantize_static_cnn_runs_on_int8_kernels(tmp_path, activation):
    qdq = _ort_static(resnet_cnn(), tmp_path, activation)
    compiled = _compare(qdq)
    _assert_integer_compute(qdq, convs=6, dense=1)
    if _host_has_vnni():
        assert "vpdpbusd" in _asm(compiled)


def test_depthwise_convolutions_compute_in_int32(tmp_path):
    qdq = _ort_static(mobilenet_block_cnn(), tmp_path)
    _compare(qdq)
    text = _lowered_text(qdq)
    assert _calls(text, "int8_conv") >= 2  # the pointwise convolutions
    assert 'out_dtype="int32"' in text  # the depthwise ones: integer arithmetic, not float


def test_transformer_weight_matmuls_run_on_int8_kernels(tmp_path):
    model = transformer_layer()
    # Weight matmuls only, as lepton-opt quantizes by default; Q.K^T stays float.
    weight_matmuls = [n.name for n in model.graph.node if n.op_type == "MatMul"
                      and any(i in {t.name for t in model.graph.initializer} for i in n.input)]
    qdq = _ort_static(model, tmp_path, nodes_to_quantize=weight_matmuls, op_types_to_quantize=["MatMul"])
    compiled = lepton_opt.compile(qdq)
    feeds = random_inputs(qdq, seed=0)
    expected, got = ort_run(qdq, feeds), compiled.run(feeds)
    for name, ref in expected.items():
        cos = float(np.dot(got[name].ravel(), ref.ravel()) / np.linalg.norm(got[name]) / np.linalg.norm(ref))
        assert cos > 0.9999, cos
    assert _calls(_lowered_text(qdq), "int8_dense") == len(weight_matmuls)


def test_gemm_with_transposed_weight_and_alpha_beta(tmp_path):
    rng = np.random.default_rng(0)
    w = rng.normal(size=(24, 40)).astype(np.float32)
    c = rng.normal(size=(24,)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w", "c"], ["y"], transB=1, alpha=0.5, beta=2.0)], "gemm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [6, 40])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [6, 24])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(c, "c")])
    qdq = _ort_static(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path)
    _compare(qdq, seeds=(0, 1, 2))
    _assert_integer_compute(qdq, dense=1)


def test_odd_sizes_are_padded_to_whole_vector_groups(tmp_path):
    """3 input channels (not a multiple of 4), 10 output channels (not 16), strides and dilation."""
    rng = np.random.default_rng(1)
    w = rng.normal(size=(10, 3, 3, 3)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], pads=[2, 1, 2, 1], strides=[2, 1], dilations=[2, 1])], "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 11, 9])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(w, "w")])
    model = onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    for activation in (QuantType.QUInt8, QuantType.QInt8):
        qdq = _ort_static(model, tmp_path, activation)
        _compare(qdq, seeds=(0, 1, 2))
        _assert_integer_compute(qdq, convs=1)


def test_dynamic_quantization_matmul_integer(tmp_path):
    model = transformer_layer()
    src, dst = tmp_path / "float.onnx", tmp_path / "dyn.onnx"
    onnx.save(model, src)
    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"])
    qdyn = onnx.load(dst)
    assert any(n.op_type == "MatMulInteger" for n in qdyn.graph.node)
    compiled = lepton_opt.compile(qdyn)
    feeds = random_inputs(qdyn, seed=0)
    expected, got = ort_run(qdyn, feeds), compiled.run(feeds)
    for name, ref in expected.items():
        np.testing.assert_allclose(got[name], ref, rtol=1e-4, atol=1e-4)
    text = _lowered_text(qdyn)
    assert _calls(text, "int8_dense") == sum(n.op_type == "MatMulInteger" for n in qdyn.graph.node) == 6


@pytest.mark.parametrize("weight_zero_point", [128, 200, 3])
def test_matmul_integer_with_asymmetric_uint8_weights_is_exact_on_the_int8_kernel(weight_zero_point):
    """onnxruntime's older quantize_dynamic made asymmetric uint8 weights (ddddocr's 8210-class
    head): centered, they do not fit int8, so the kernel takes ``b - 128`` and a per-column
    correction; the int32 result must equal onnxruntime's exactly."""
    rng = np.random.default_rng(weight_zero_point)
    b = rng.integers(0, 256, (64, 40), dtype=np.uint8)
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["a", "b", "za", "zb"], ["y"])], "mmi",
        [helper.make_tensor_value_info("a", TensorProto.UINT8, [3, 5, 64])],
        [helper.make_tensor_value_info("y", TensorProto.INT32, None)],
        [numpy_helper.from_array(b, "b"), numpy_helper.from_array(np.array(117, np.uint8), "za"),
         numpy_helper.from_array(np.array(weight_zero_point, np.uint8), "zb")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    feeds = {"a": rng.integers(0, 256, (3, 5, 64), dtype=np.uint8)}
    np.testing.assert_array_equal(lepton_opt.compile(model).run(feeds)["y"], ort_run(model, feeds)["y"])
    assert _calls(_lowered_text(model), "int8_dense") == 1


@pytest.mark.parametrize("weight_zero_point", [3, 128])
@pytest.mark.parametrize("dynamic_input", [True, False])
def test_conv_integer_with_uint8_weights_and_run_time_zero_point(weight_zero_point, dynamic_input):
    """ddddocr's dynamically quantized CNN: DynamicQuantizeLinear computes the data's zero point
    at run time and ConvInteger reads it, with asymmetric uint8 weights; the packed kernel pads
    with the run-time zero point and corrects for the weight's shift, exactly."""
    rng = np.random.default_rng(weight_zero_point)
    w = rng.integers(0, 256, (12, 5, 3, 3), dtype=np.uint8)
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.array(weight_zero_point, np.uint8), "zw")]
    if dynamic_input:
        nodes = [helper.make_node("DynamicQuantizeLinear", ["x"], ["xq", "sx", "zx"]),
                 helper.make_node("ConvInteger", ["xq", "w", "zx", "zw"], ["y"], pads=[1, 2, 1, 0], strides=[1, 2])]
        inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 5, 9, 11])]
        feeds = {"x": rng.standard_normal((1, 5, 9, 11)).astype(np.float32)}
    else:
        inits.append(numpy_helper.from_array(np.array(77, np.uint8), "zx"))
        nodes = [helper.make_node("ConvInteger", ["xq", "w", "zx", "zw"], ["y"], pads=[1, 1, 1, 1])]
        inputs = [helper.make_tensor_value_info("xq", TensorProto.UINT8, [1, 5, 9, 11])]
        feeds = {"xq": rng.integers(0, 256, (1, 5, 9, 11), dtype=np.uint8)}
    graph = helper.make_graph(nodes, "convint", inputs, [helper.make_tensor_value_info("y", TensorProto.INT32, None)],
                              inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    np.testing.assert_array_equal(lepton_opt.compile(model).run(feeds)["y"], ort_run(model, feeds)["y"])
    assert _calls(_lowered_text(model), "int8_conv") == 1


def test_dynamic_quantization_with_uint8_weights(tmp_path):
    model = transformer_layer()
    src, dst = tmp_path / "float.onnx", tmp_path / "dyn.onnx"
    onnx.save(model, src)
    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QUInt8, op_types_to_quantize=["MatMul"])
    qdyn = onnx.load(dst)
    feeds = random_inputs(qdyn, seed=0)
    expected, got = ort_run(qdyn, feeds), lepton_opt.compile(qdyn).run(feeds)
    for name, ref in expected.items():
        np.testing.assert_allclose(got[name], ref, rtol=1e-4, atol=1e-4)
    assert _calls(_lowered_text(qdyn), "int8_dense") == sum(n.op_type == "MatMulInteger" for n in qdyn.graph.node)


def _qat_model(weight_zero_point: int, weight_type=TensorProto.INT8) -> onnx.ModelProto:
    """A QAT-style export: float weight -> QuantizeLinear -> DequantizeLinear in the graph."""
    rng = np.random.default_rng(2)
    w = rng.normal(size=(16, 8, 3, 3)).astype(np.float32)
    inits = [numpy_helper.from_array(w, "w"),
             numpy_helper.from_array(np.array(0.05, np.float32), "sx"),
             numpy_helper.from_array(np.array(128, np.uint8), "zx"),
             numpy_helper.from_array(np.full(16, 0.02, np.float32), "sw"),
             helper.make_tensor("zw", weight_type, [16], [weight_zero_point] * 16)]
    nodes = [helper.make_node("QuantizeLinear", ["x", "sx", "zx"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "sx", "zx"], ["xd"]),
             helper.make_node("QuantizeLinear", ["w", "sw", "zw"], ["wq"], axis=0),
             helper.make_node("DequantizeLinear", ["wq", "sw", "zw"], ["wd"], axis=0),
             helper.make_node("Conv", ["xd", "wd"], ["y"], pads=[1, 1, 1, 1])]
    graph = helper.make_graph(nodes, "qat", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 12, 12])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 12, 12])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_qat_weights_quantized_in_the_graph():
    model = _qat_model(0)
    compiled = lepton_opt.compile(model)
    feeds = random_inputs(model, seed=0)
    np.testing.assert_allclose(compiled.run(feeds)["y"], ort_run(model, feeds)["y"], rtol=1e-4, atol=1e-4)
    _assert_integer_compute(model, convs=1)


def test_asymmetric_weights_take_the_float_path_and_stay_correct():
    model = _qat_model(3, TensorProto.UINT8)
    compiled = lepton_opt.compile(model)
    feeds = random_inputs(model, seed=0)
    np.testing.assert_allclose(compiled.run(feeds)["y"], ort_run(model, feeds)["y"], rtol=1e-4, atol=1e-4)
    assert _calls(_lowered_text(model), "int8_conv") == 0


def test_without_vnni_the_integer_kernels_still_build_and_agree(tmp_path):
    qdq = _ort_static(resnet_cnn(), tmp_path)
    target = tvm.target.Target({"kind": "llvm", "mcpu": "x86-64-v3"})
    assert not int8.has_vnni(target)
    compiled = lepton_opt.compile(qdq, mcpu="x86-64-v3")
    feeds = random_inputs(qdq, seed=0)
    expected = ort_run(qdq, feeds)["logits"]
    assert np.abs(compiled.run(feeds)["logits"] - expected).max() <= _output_step(qdq, "logits") + 1e-6
    assert "vpdpbusd" not in _asm(compiled)


def test_weight_packing_layout():
    w = np.arange(20 * 6, dtype=np.int64).reshape(20, 6).astype(np.int8)
    packed = int8.pack_dense(w)
    assert packed.shape == (2, 2, 16, 4)
    assert packed[1, 1, 2, 1] == w[18, 5] and packed[1, 1, 4, 0] == 0 and packed[0, 1, 3, 3] == 0
    wc = np.arange(17 * 3 * 2 * 2).reshape(17, 3, 2, 2).astype(np.int8)
    pc = int8.pack_conv(wc)
    assert pc.shape == (2, 2, 2, 1, 16, 4)
    assert pc[1, 0, 1, 0, 0, 2] == wc[16, 2, 0, 1] and pc[1, 0, 1, 0, 1, 2] == 0


def test_ort_qoperator_format_qlinearconv_runs_on_int8_kernels(tmp_path):
    """onnxruntime's other output format: QLinearConv / QLinearMatMul nodes with int8 weights."""
    model = resnet_cnn()
    src, dst = tmp_path / "float.onnx", tmp_path / "qop.onnx"
    onnx.save(model, src)
    quantize_static(str(src), str(dst), _Feeds(model, 8), quant_format=QuantFormat.QOperator, per_channel=True,
                    op_types_to_quantize=["Conv"], weight_type=QuantType.QInt8)
    qop = onnx.load(dst)
    assert sum(n.op_type == "QLinearConv" for n in qop.graph.node) == 6
    compiled = lepton_opt.compile(qop)
    for seed in (0, 1):
        feeds = random_inputs(qop, seed=seed)
        expected = ort_run(qop, feeds)["logits"]
        got = compiled.run(feeds)["logits"]
        cos = float(np.dot(got.ravel(), expected.ravel()) / np.linalg.norm(got) / np.linalg.norm(expected))
        assert cos > 0.9999, cos
    assert _calls(_lowered_text(qop), "int8_conv") == 6


@pytest.mark.parametrize("batch", [1, "N"])
def test_every_integer_kernel_takes_the_int8_schedule(tmp_path, batch):
    """Static and dynamic batch: each int8 kernel is register-tiled (and uses VNNI where the
    host has it) with its requantization fused in, never left to the generic fallback."""
    from lepton_opt.targets import cpu_schedule

    qdq = _ort_static(resnet_cnn(batch=batch), tmp_path)
    target = resolve_target("llvm").tvm_target()
    with target:
        mod = tvm.transform.Sequential(cpu_schedule._pre_schedule_passes(target))(
            lower_model(lepton_opt.load(qdq)).mod)
    kernels = {gv.name_hint: func for gv, func in mod.functions_items()
               if isinstance(func, tvm.tirx.PrimFunc) and "int8_" in gv.name_hint}
    assert len(kernels) >= 5
    for name, func in kernels.items():
        # The kernel reads the data as uint8 and the packed weight as int8, and sums in int32.
        dtypes = [str(p.dtype) for p in func.params]
        assert dtypes[:2] == ["uint8", "int8"], (name, dtypes)
        scheduled, rule = cpu_schedule.schedule_prim_func(func, target)
        assert rule == "int8", name
        if "int8_conv" in name:
            assert "quantize" in name, name  # the requantization is fused into the kernel
        if int8.has_vnni(target):
            assert "vpdpbusd" in scheduled.script(), name
    if batch == "N":
        compiled = lepton_opt.compile(qdq)
        feeds = random_inputs(qdq, seed=0, shapes={"N": 3})
        ref = ort_run(qdq, feeds)["logits"]
        assert np.abs(compiled.run(feeds)["logits"] - ref).max() <= _output_step(qdq, "logits") + 1e-6
