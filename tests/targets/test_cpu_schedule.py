"""Default CPU schedules: every kernel of a real model gets a rule, and the result is parallel
and vectorized; numerics are checked against onnxruntime by the op and end-to-end tests."""

from __future__ import annotations

import collections
import re

import numpy as np

import pytest
import tvm
from tvm import tirx

import lepton_opt
from lepton_opt.targets import cpu_schedule
from lepton_opt.targets.build import resolve_target
from lepton_opt.targets.compile import lower_model
from tests.models import mobilenet_block_cnn, resnet_cnn, transformer_layer


def _graph_passes_text(model) -> str:
    """The main function after the CPU pipeline's graph-level passes, as TVMScript."""
    target = resolve_target("llvm").tvm_target()
    with target:
        mod = tvm.transform.Sequential(cpu_schedule.cpu_graph_passes(target))(lower_model(lepton_opt.load(model)).mod)
    return mod["main"].script()


def _legalized(model):
    target = resolve_target("llvm").tvm_target()
    with target:
        mod = tvm.transform.Sequential(cpu_schedule._pre_schedule_passes(target))(
            lower_model(lepton_opt.load(model)).mod)
    return mod, target


@pytest.mark.parametrize("make", [resnet_cnn, mobilenet_block_cnn, transformer_layer])
def test_every_kernel_gets_a_schedule(make):
    mod, target = _legalized(make())
    rules = collections.Counter()
    for _, func in mod.functions_items():
        if not isinstance(func, tirx.PrimFunc):
            continue
        scheduled, rule = cpu_schedule.schedule_prim_func(func, target)
        rules[rule] += 1
        assert rule != "none", func
        text = scheduled.script()
        assert "T.parallel" in text or "T.vectorized" in text, text
    # Convolutions and matmuls take the register-tiled rule, not the generic fallback.
    assert rules["tiled_reduction"] >= 6, rules


def test_convolutions_are_converted_to_nhwc():
    target = resolve_target("llvm").tvm_target()
    mod = lower_model(lepton_opt.load(resnet_cnn())).mod
    with target:
        converted = tvm.transform.Sequential(cpu_schedule.cpu_graph_passes(target))(mod)
    text = converted["main"].script()
    convs = text.count("R.nn.conv2d(")
    assert convs + text.count("winograd_output") == 6  # 3x3 ones with 32+ channels become Winograd
    assert text.count('data_layout="NHWC"') == convs and text.count('kernel_layout="HWIO"') == convs


def test_odd_extents_are_padded_into_the_tiled_micro_kernel():
    """197 tokens (ViT) and a prime width: no power-of-two divisor, so the matmul is padded to
    the vector width and row tile, not left with a scalar one-row micro-kernel."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from tests.models import ort_run

    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["mm"]), helper.make_node("Relu", ["mm"], ["y"])], "odd",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 197, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 197, 179])],
        [numpy_helper.from_array(rng.standard_normal((64, 179)).astype(np.float32), "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    mod, target = _legalized(model)
    (func,) = [f for _, f in mod.functions_items() if isinstance(f, tirx.PrimFunc)]
    scheduled, rule = cpu_schedule.schedule_prim_func(func, target)
    text = scheduled.script()
    assert rule == "tiled_reduction" and "T.vectorized" in text and "_pad" in text, text
    x = rng.standard_normal((1, 197, 64)).astype(np.float32)
    got = lepton_opt.compile(model).run({"x": x})["y"]
    np.testing.assert_allclose(got, ort_run(model, {"x": x})["y"], rtol=1e-4, atol=1e-4)
    onnx.checker.check_model(model)


@pytest.mark.parametrize("channels, groups", [
    (45, 1),     # a pruned layer: no vector width divides 45
    (116, 1),    # ShuffleNetV2: 4-wide vectors only
    (58, 58),    # ShuffleNetV2's depthwise convolutions
    (1, 1),      # a probability map (basic-pitch's heads): one channel ran as a scalar dot-product chain
])
def test_odd_output_channels_of_a_convolution_are_padded_to_whole_vectors(channels, groups):
    """The NHWC convolution computes a whole number of vectors of channels and slices the rest
    away, so its micro-kernel gets full vectors; the result still equals onnxruntime's."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    from tests.models import ort_run

    rng = np.random.default_rng(1)
    cin = 8 if groups == 1 else channels
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1], group=groups),
         helper.make_node("Relu", ["c"], ["y"])],
        "odd_conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, cin, 12, 12])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, channels, 12, 12])],
        [numpy_helper.from_array(rng.standard_normal((channels, cin // groups, 3, 3)).astype(np.float32), "w"),
         numpy_helper.from_array(rng.standard_normal(channels).astype(np.float32), "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    target = resolve_target("llvm").tvm_target()
    lanes = cpu_schedule._lanes(target, 32)
    with target:
        mod = tvm.transform.Sequential(cpu_schedule.cpu_graph_passes(target))(lower_model(lepton_opt.load(model)).mod)
    text = mod["main"].script()
    padded = -(-channels // lanes) * lanes
    if channels < 4 or (channels > lanes and channels % lanes):
        assert "R.strided_slice" in text and "R.nn.pad" in text, text
        if groups > 1:
            assert f"groups={padded}" in text, text
    x = rng.standard_normal((1, cin, 12, 12)).astype(np.float32)
    got = lepton_opt.compile(model).run({"x": x})["y"]
    np.testing.assert_allclose(got, ort_run(model, {"x": x})["y"], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind", ["matmul", "conv"])
def test_constant_weights_are_repacked_at_build_time(kind):
    """A constant weight read by a register-tiled kernel is repacked to [N/lanes, ..., lanes] by
    a layout-rewrite block that the build moves out of the kernel and folds into the constant:
    the built module runs the packed kernel alone, with the same results as onnxruntime."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    from tests.models import ort_run

    rng = np.random.default_rng(2)
    if kind == "matmul":
        node = helper.make_node("MatMul", ["x", "w"], ["y"])
        x_shape, y_shape, w = [1, 24, 64], [1, 24, 96], rng.standard_normal((64, 96))
    else:
        node = helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])
        x_shape, y_shape, w = [1, 16, 10, 10], [1, 64, 10, 10], rng.standard_normal((64, 16, 3, 3))
    graph = helper.make_graph([node], kind, [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)],
                              [numpy_helper.from_array(w.astype(np.float32), "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    mod, target = _legalized(model)
    (func,) = [f for gv, f in mod.functions_items() if isinstance(f, tirx.PrimFunc) and kind in gv.name_hint]
    scheduled, rule = cpu_schedule.schedule_prim_func(func, target)
    assert rule == "tiled_reduction"
    assert "meta_schedule.layout_rewrite_preproc" in scheduled.script()
    with target:
        built = tvm.transform.Sequential([cpu_schedule.default_cpu_schedule_pass(target),
                                          *cpu_schedule._post_schedule_passes()])(mod)
    names = [gv.name_hint for gv, f in built.functions_items() if isinstance(f, tirx.PrimFunc)]
    main_text = built["main"].script()
    # The repacking ran at build time: main calls only the packed kernel, on a folded constant.
    assert any(n.endswith("_prepacked") for n in names) and "weight_prepack" not in main_text, (names, main_text)
    x = rng.standard_normal(x_shape).astype(np.float32)
    got = lepton_opt.compile(model).run({"x": x})["y"]
    np.testing.assert_allclose(got, ort_run(model, {"x": x})["y"], rtol=1e-4, atol=1e-4)


def test_row_functions_take_the_vectorized_row_rule_and_fast_nonlinear_ops_stay_accurate():
    """LayerNormalization and Softmax are scheduled row by row with vectorized partial
    reductions; Softmax, Sigmoid and Tanh use TVM's vectorizable exp/tanh. Over inputs from -30 to
    30 they stay within float32 rounding of onnxruntime's libm-based results."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    from tests.models import ort_run

    nodes = [helper.make_node("LayerNormalization", ["x", "g", "b"], ["ln"], axis=-1),
             helper.make_node("Softmax", ["x"], ["sm"], axis=-1), helper.make_node("Sigmoid", ["x"], ["sg"]),
             helper.make_node("Tanh", ["x"], ["th"])]
    graph = helper.make_graph(nodes, "rows", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [6, 64])],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, [6, 64]) for n in ("ln", "sm", "sg", "th")],
                              [numpy_helper.from_array(np.linspace(0.5, 1.5, 64, dtype=np.float32), "g"),
                               numpy_helper.from_array(np.linspace(-0.2, 0.2, 64, dtype=np.float32), "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    mod, target = _legalized(model)
    rules = {gv.name_hint: cpu_schedule.schedule_prim_func(f, target)[1] for gv, f in mod.functions_items()
             if isinstance(f, tirx.PrimFunc)}
    assert [r for n, r in rules.items() if "layer_norm" in n] == ["rows"], rules
    assert [r for n, r in rules.items() if "softmax" in n] == ["rows"], rules
    text = mod.script()
    assert "fast_exp" in text.lower() or "T_fast_exp" in text, "softmax/sigmoid without the fast exp"
    x = np.linspace(-30, 30, 6 * 64, dtype=np.float32).reshape(6, 64)
    got, ref = lepton_opt.compile(model).run({"x": x}), ort_run(model, {"x": x})
    for name in ("sm", "sg", "th"):
        np.testing.assert_allclose(got[name], ref[name], rtol=2e-6, atol=1e-7, err_msg=name)
    np.testing.assert_allclose(got["ln"], ref["ln"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("elem_type, dtype", [(10, "float16"), (16, "bfloat16")])
def test_low_precision_sigmoid_tanh_softmax_use_the_fast_forms_in_float32(elem_type, dtype):
    """float16/bfloat16 Sigmoid, Tanh and Softmax take the vectorizable fast forms too, computed
    in float32 and rounded once: no per-element exp/tanh call is left, and the results are the
    float32 functions rounded to the type (within one unit in the last place)."""
    import ml_dtypes
    import numpy as np
    from onnx import helper

    nodes = [helper.make_node("Softmax", ["x"], ["sm"], axis=-1), helper.make_node("Sigmoid", ["x"], ["sg"]),
             helper.make_node("Tanh", ["x"], ["th"])]
    graph = helper.make_graph(nodes, "low", [helper.make_tensor_value_info("x", elem_type, [6, 64])],
                              [helper.make_tensor_value_info(n, elem_type, [6, 64]) for n in ("sm", "sg", "th")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 22)])
    mod, _ = _legalized(model)
    text = mod.script()
    assert "fast_exp" in text.lower() and "fast_tanh" in text.lower(), "no fast forms"
    left = re.findall(r"\bt\.(?:exp|sigmoid|tanh)\(", text, flags=re.IGNORECASE)
    assert not left, f"{left} left: one libm call per element"
    np_type = np.float16 if dtype == "float16" else ml_dtypes.bfloat16
    x = np.linspace(-12, 12, 6 * 64, dtype=np.float32).reshape(6, 64).astype(np_type)
    got = lepton_opt.compile(model).run({"x": x})
    xf = x.astype(np.float64)
    e = np.exp(xf - xf.max(-1, keepdims=True))
    ref = {"sm": e / e.sum(-1, keepdims=True), "sg": 1 / (1 + np.exp(-xf)), "th": np.tanh(xf)}
    ulp = 2.0 ** -10 if dtype == "float16" else 2.0 ** -7
    for name, want in ref.items():
        assert got[name].dtype == np_type, name
        np.testing.assert_allclose(got[name].astype(np.float64), want, rtol=ulp, atol=1e-6, err_msg=name)


@pytest.mark.parametrize("size, batch, epilogue", [(14, 1, "relu"), (7, 2, "silu"), (9, 1, "residual")])
def test_three_by_three_convolutions_run_as_winograd(size, batch, epilogue):
    """3x3 stride-1 convolutions with 32+ channels are rewritten to Winograd F(2x2, 3x3) (input
    transform, 16 batched matmuls on the transformed constant weight, output transform with the
    epilogue), odd sizes cropped; a 16-channel and a strided one stay direct. Same results as
    onnxruntime within float32 rounding of the longer sums."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    from tests.models import ort_run

    rng = np.random.default_rng(3)
    weights = {"w0": rng.standard_normal((32, 32, 3, 3)) * 0.1, "b0": rng.standard_normal(32),
               "w1": rng.standard_normal((16, 32, 3, 3)) * 0.1, "w2": rng.standard_normal((16, 16, 3, 3)) * 0.1,
               "w3": rng.standard_normal((32, 16, 3, 3)) * 0.1}
    nodes = [helper.make_node("Conv", ["x", "w0", "b0"], ["c0"], pads=[1, 1, 1, 1])]
    if epilogue == "relu":
        nodes.append(helper.make_node("Relu", ["c0"], ["a0"]))
    elif epilogue == "silu":
        nodes += [helper.make_node("Sigmoid", ["c0"], ["s0"]), helper.make_node("Mul", ["c0", "s0"], ["a0"])]
    else:
        nodes.append(helper.make_node("Add", ["c0", "x"], ["a0"]))
    nodes += [helper.make_node("Conv", ["a0", "w1"], ["c1"], pads=[1, 1, 1, 1]),  # 32 in: Winograd
              helper.make_node("Conv", ["c1", "w2"], ["c2"], pads=[1, 1, 1, 1]),  # 16 in: direct
              helper.make_node("Conv", ["c2", "w3"], ["y"], pads=[1, 1, 1, 1], strides=[2, 2])]  # strided: direct
    out = (size + 1) // 2
    graph = helper.make_graph(nodes, "wino", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 32, size, size])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 32, out, out])],
                              [numpy_helper.from_array(v.astype(np.float32), k) for k, v in weights.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    mod, target = _legalized(model)
    scheduled = [cpu_schedule.schedule_prim_func(f, target) for _, f in mod.functions_items()
                 if isinstance(f, tirx.PrimFunc)]
    texts = "".join(f.script() for f, rule in scheduled if rule == "winograd")
    # Input and output transforms of the two 32-channel convolutions (one kernel may hold an output
    # transform and the next input transform), their tile positions unrolled.
    assert texts.count('T.sblock("lepton_winograd_in")') == 2 and texts.count('T.sblock("lepton_winograd_out")') == 2
    import re

    unrolled = collections.Counter(re.findall(r"T\.unroll\((?:T\.int64\()?(\d+)", texts))
    assert unrolled["16"] == 2 and unrolled["2"] == 4, unrolled  # the tile positions, unrolled
    kernels = [gv.name_hint for gv, f in mod.functions_items() if isinstance(f, tirx.PrimFunc)]
    assert sum("conv2d" in k for k in kernels) == 2, kernels  # the 16-channel and the strided one
    x = rng.standard_normal((batch, 32, size, size)).astype(np.float32)
    got = lepton_opt.compile(model).run({"x": x})["y"]
    np.testing.assert_allclose(got, ort_run(model, {"x": x})["y"], rtol=1e-4, atol=1e-4)


def _lane_partials_are_contiguous_vectors(sch) -> list[str]:
    """Names of the rfactor partial blocks of ``sch``, each checked: its innermost loop is the
    vectorized lane loop (one contiguous vector per reduction step, not a gather across rows)."""
    names = re.findall(r'T\.sblock\("([^"]+_rf)"\)', sch.mod.script())
    for name in names:
        block = sch.get_sblock(name)
        inner = sch.get(sch.get_loops(block)[-1])
        lane = cpu_schedule._block_realize(sch, block).iter_values[0]
        assert inner.kind == tirx.ForKind.VECTORIZED and inner.loop_var.same_as(lane), (name, sch.mod.script())
    return names


def test_partial_reductions_vectorize_over_their_lanes_and_attention_masks_are_selects():
    """The row rule (a layer norm, its reductions computed per row) and the attention kernel
    (ViT's 197 tokens, causal: padded keys and a causal mask) reduce over contiguous lane vectors;
    the attention masks are selects (TVM scalarizes a vector loop holding an if_then_else: the
    padded ViT kernel once ran 7x slower)."""
    from onnx import TensorProto, helper, numpy_helper
    from tvm import te

    from lepton_opt.targets import attention

    node = helper.make_node("LayerNormalization", ["x", "g", "b"], ["y"], axis=-1)
    init = [numpy_helper.from_array(np.ones(768, np.float32), "g"),
            numpy_helper.from_array(np.zeros(768, np.float32), "b")]
    graph = helper.make_graph([node], "ln", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [128, 768])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [128, 768])], init)
    mod, target = _legalized(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    (func,) = [f for gv, f in mod.functions_items() if "layer_norm" in gv.name_hint]
    assert len(_lane_partials_are_contiguous_vectors(cpu_schedule._rule_rows(func, target))) == 2

    q, k, v = (te.placeholder((1, 197, 6, 64), name=n) for n in "qkv")
    out = attention.compute(q, k, v, None, 0.125, 0)
    sch = cpu_schedule._rule_attention(te.create_prim_func([q, k, v, out]), target)
    assert len(_lane_partials_are_contiguous_vectors(sch)) == 2
    assert "if_then_else" not in sch.mod.script()


@pytest.mark.parametrize("groups, cin, cout, stride, dilation", [
    (2, 48, 128, 1, 1),    # AlexNet's towers
    (4, 16, 24, 2, 1),     # a grouped strided conv with few channels per group
    (3, 8, 8, 1, 2),       # dilated
    (26, 8, 8, 1, 1),      # RegNet's 8-channel groups: too many to split, computed expanded
    (32, 4, 4, 2, 1),      # ResNeXt's 32 groups, strided
])
def test_grouped_convolutions_take_the_tiled_rule(groups, cin, cout, stride, dilation):
    """A grouped convolution (not depthwise) has no vectorizing rule as one kernel (AlexNet ran
    16x slower than onnxruntime): up to 16 groups it becomes one convolution per group, beyond
    that a reduction over an expanded input; either way the register-tiled rule schedules it."""
    from onnx import TensorProto, helper, numpy_helper

    from tests.models import ort_run

    rng = np.random.default_rng(groups)
    cin_total, cout_total = cin * groups, cout * groups
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w", "b"], ["c"], group=groups, pads=[dilation] * 4,
                          strides=[stride, stride], dilations=[dilation, dilation]),
         helper.make_node("Relu", ["c"], ["y"])],
        "grouped", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, cin_total, 14, 14])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(rng.standard_normal((cout_total, cin, 3, 3)).astype(np.float32), "w"),
         numpy_helper.from_array(rng.standard_normal(cout_total).astype(np.float32), "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    text = _graph_passes_text(model)
    assert f"groups={groups}" not in text, text
    if groups <= cpu_schedule.MAX_SPLIT_GROUPS:
        assert text.count("R.nn.conv2d(") + text.count("winograd_output") == groups
    else:
        assert "grouped_conv2d" in text and "R.take" in text
    mod, target = _legalized(model)
    conv_rules = {gv.name_hint: cpu_schedule.schedule_prim_func(f, target)[1]
                  for gv, f in mod.functions_items() if isinstance(f, tirx.PrimFunc) and "conv2d" in gv.name_hint}
    assert conv_rules and set(conv_rules.values()) <= {"tiled_reduction", "winograd"}, conv_rules
    x = rng.standard_normal((1, cin_total, 14, 14)).astype(np.float32)
    got = lepton_opt.compile(model).run({"x": x})["y"]
    np.testing.assert_allclose(got, ort_run(model, {"x": x})["y"], rtol=1e-4, atol=1e-4)


def test_odd_output_columns_of_a_constant_weight_matmul_are_padded_to_whole_vectors():
    """A classifier over 67 classes (a prime: a CTC head over 8210 characters has 821 in it): the
    weight gets zero columns up to whole vectors and is repacked, the result is sliced back."""
    from onnx import TensorProto, helper, numpy_helper

    from tests.models import ort_run

    rng = np.random.default_rng(3)
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=1)], "head",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [20, 96])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [20, 67])],
        [numpy_helper.from_array(rng.standard_normal((67, 96)).astype(np.float32), "w"),
         numpy_helper.from_array(rng.standard_normal(67).astype(np.float32), "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    text = _graph_passes_text(model)
    assert "R.nn.pad" in text and "R.strided_slice" in text, text
    x = rng.standard_normal((20, 96)).astype(np.float32)
    got = lepton_opt.compile(model).run({"x": x})["y"]
    np.testing.assert_allclose(got, ort_run(model, {"x": x})["y"], rtol=1e-4, atol=1e-4)


def test_reductions_over_outer_axes_of_channels_last_tensors_vectorize_over_channels():
    """InstanceNormalization after a convolution (channels-last, reduced over H and W) and
    pooling after it: the channel-vector rule, each reduction computed once (dlight's rule recomputed it
    for every parallel row: a style-transfer net at 2.4x onnxruntime's time, now 1.04x)."""
    from onnx import TensorProto, helper, numpy_helper

    from tests.models import ort_run

    rng = np.random.default_rng(11)
    inits = [numpy_helper.from_array((rng.standard_normal(shape) * 0.3).astype(np.float32), name)
             for name, shape in [("w", (32, 8, 3, 3)), ("s", (32,)), ("b", (32,))]]
    graph = helper.make_graph([
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("InstanceNormalization", ["c", "s", "b"], ["n"], epsilon=1e-5),
        helper.make_node("Relu", ["n"], ["r"]),
        helper.make_node("AveragePool", ["r"], ["p"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("GlobalAveragePool", ["p"], ["y"]),
    ], "style", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 24, 20])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 32, 1, 1])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    mod, target = _legalized(model)
    rules = {gv.name_hint: cpu_schedule.schedule_prim_func(f, target)[1]
             for gv, f in mod.functions_items() if isinstance(f, tirx.PrimFunc)}
    assert [r for name, r in rules.items() if "instance_norm" in name] == ["channel_reduction"], rules
    assert "row_reduction" not in rules.values(), rules
    x = rng.standard_normal((1, 8, 24, 20)).astype(np.float32)
    got = lepton_opt.compile(model).run({"x": x})["y"]
    np.testing.assert_allclose(got, ort_run(model, {"x": x})["y"], rtol=1e-4, atol=1e-4)


def test_three_d_convolutions_run_channels_last_on_the_tiled_rule():
    """A video net's Conv3d (r3d_18: 7.2x onnxruntime's time on the generic schedule, 0.74x
    channels-last and tiled), followed by 3-D pooling, a strided Conv3d and a residual add."""
    from onnx import TensorProto, helper, numpy_helper

    from tests.models import ort_run

    rng = np.random.default_rng(7)
    inits = [numpy_helper.from_array((rng.standard_normal(shape) * 0.2).astype(np.float32), name)
             for name, shape in [("w1", (16, 3, 3, 3, 3)), ("b1", (16,)), ("w2", (24, 16, 3, 3, 3)),
                                 ("w3", (24, 16, 1, 1, 1))]]
    graph = helper.make_graph([
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1] * 6),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[1, 2, 2], strides=[1, 2, 2]),
        helper.make_node("Conv", ["p1", "w2"], ["c2"], pads=[1] * 6, strides=[2, 2, 2]),
        helper.make_node("Conv", ["p1", "w3"], ["c3"], strides=[2, 2, 2]),
        helper.make_node("Add", ["c2", "c3"], ["y"]),
    ], "video", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 24, 2, 4, 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    text = _graph_passes_text(model)
    assert text.count('data_layout="NDHWC"') == 3 and text.count('kernel_layout="DHWIO"') == 3, text
    mod, target = _legalized(model)
    rules = [cpu_schedule.schedule_prim_func(f, target)[1] for gv, f in mod.functions_items()
             if isinstance(f, tirx.PrimFunc) and "conv3d" in gv.name_hint]
    assert len(rules) == 3 and set(rules) == {"tiled_reduction"}, rules
    x = rng.standard_normal((1, 3, 4, 16, 16)).astype(np.float32)
    got = lepton_opt.compile(model).run({"x": x})["y"]
    np.testing.assert_allclose(got, ort_run(model, {"x": x})["y"], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("x_dims, weight_input", [
    (["n", 96], False),        # a detector's box head after NMS: rows known at run time only
    (["b", 7, 96], False),     # a dynamic batch: every leading axis is a row
    (["n", 96], True),         # the second operand an input too: padded inside the kernel
])
def test_matmuls_with_rows_known_at_run_time_take_the_tiled_rule(x_dims, weight_input):
    """Rows counted at run time are padded to whole register tiles (in the graph, when the
    weight is a constant) instead of falling to the generic schedule (a 12544x1024 box-head
    matmul ran 400x slower there); every row count still gives onnxruntime's result."""
    from onnx import TensorProto, helper, numpy_helper

    from tests.models import ort_run

    rng = np.random.default_rng(5)
    w = rng.standard_normal((96, 80)).astype(np.float32)
    out_dims = x_dims[:-1] + [80]
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["mm"]), helper.make_node("Relu", ["mm"], ["y"])], "rows",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_dims)]
        + ([helper.make_tensor_value_info("w", TensorProto.FLOAT, [96, 80])] if weight_input else []),
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_dims)],
        [] if weight_input else [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    text = _graph_passes_text(model)
    assert ("pad_rows" in text) == (not weight_input), text
    mod, target = _legalized(model)
    rules = {gv.name_hint: cpu_schedule.schedule_prim_func(f, target)[1]
             for gv, f in mod.functions_items() if isinstance(f, tirx.PrimFunc)}
    assert [r for name, r in rules.items() if name.startswith(("matmul", "fused_matmul"))] == ["tiled_reduction"], rules
    compiled = lepton_opt.compile(model)
    for rows in (1, 5, 33):
        x = rng.standard_normal([rows if isinstance(d, str) else d for d in x_dims]).astype(np.float32)
        feeds = {"x": x, "w": w} if weight_input else {"x": x}
        got = compiled.run(feeds)["y"]
        assert got.shape == x.shape[:-1] + (80,)
        np.testing.assert_allclose(got, ort_run(model, feeds)["y"], rtol=1e-4, atol=1e-4)


def test_convolutions_with_a_dynamic_batch_take_the_tiled_rule():
    """A CNN exported with a dynamic batch (torch's dynamic_axes, most exports) compiled without
    --input-shape: its convolutions keep the register-tiled rule with the batch a loop around
    the tiles (they fell to a generic schedule: ResNet-18 ran 24x slower than with the batch
    fixed); every batch size gives onnxruntime's result."""
    from tests.models import ort_run

    model = resnet_cnn(batch="N")
    compiled = lepton_opt.compile(model)
    assert compiled.inputs[0]["shape"][0] == "N"
    convs = {name: facts["rule"] for name, facts in compiled.manifest["kernels"].items() if "conv2d" in name}
    assert convs and set(convs.values()) == {"tiled_reduction"}, convs
    rng = np.random.default_rng(3)
    for batch in (1, 3):
        feeds = {"input": rng.standard_normal((batch, 3, 32, 32)).astype(np.float32)}
        got, expected = compiled.run(feeds), ort_run(model, feeds)
        for name, ref in expected.items():
            np.testing.assert_allclose(got[name], ref, rtol=1e-4, atol=1e-4, err_msg=name)


@pytest.mark.parametrize("kernel, pads, cin, cout", [
    (2, [0, 0, 0, 0], 16, 8),   # PP-OCR's DB head / a U-Net: 2x2 stride 2
    (4, [1, 2, 1, 0], 8, 3),    # 4x4 stride 4, cropped unevenly
    (3, [0, 0, 0, 0], 5, 1),    # one output channel (the DB head's probability map)
])
def test_transposed_convolutions_with_kernel_equal_to_stride_are_1x1_convolutions(kernel, pads, cin, cout):
    """Each output pixel comes from one input pixel: a 1x1 NHWC convolution and a depth-to-space
    reshuffle, scheduled by the tiled rule, instead of TVM's zero-dilated direct convolution."""
    from onnx import TensorProto, helper, numpy_helper

    from tests.models import ort_run

    rng = np.random.default_rng(kernel)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w0"], ["c"], pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["c"], ["r"]),
         helper.make_node("ConvTranspose", ["r", "w", "b"], ["t"], strides=[kernel, kernel], pads=pads),
         helper.make_node("Sigmoid", ["t"], ["y"])],
        "up", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 10, 12])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(rng.standard_normal((cin, 3, 3, 3)).astype(np.float32), "w0"),
         numpy_helper.from_array(rng.standard_normal((cin, cout, kernel, kernel)).astype(np.float32), "w"),
         numpy_helper.from_array(rng.standard_normal(cout).astype(np.float32), "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    text = _graph_passes_text(model)
    assert "conv2d_transpose" not in text and text.count('data_layout="NHWC"') == 2, text
    x = rng.standard_normal((1, 3, 10, 12)).astype(np.float32)
    got = lepton_opt.compile(model).run({"x": x})["y"]
    np.testing.assert_allclose(got, ort_run(model, {"x": x})["y"], rtol=1e-4, atol=1e-5)


def test_padded_channel_count_gives_the_micro_kernel_a_wider_tile():
    """SqueezeNet's 1000-class 1x1 conv on a 13-wide map: 63 vectors (1008) only tile 13 x 1, a
    broadcast load per FMA; 64 (1024) tile 13 x 2. Counts that tile well keep the next vector."""
    assert cpu_schedule._register_tile(13, 63, 32) == (13, 1)
    assert cpu_schedule._register_tile(13, 64, 32) == (13, 2)
    assert cpu_schedule._tile_friendly_width(1000, 16, 13, 32) == 1024
    assert cpu_schedule._tile_friendly_width(45, 16, 12, 32) == 48
    assert cpu_schedule._tile_friendly_width(116, 16, 14, 32) == 128


def test_prime_output_widths_are_computed_wider_for_the_register_tile():
    """tf2onnx's 'same'-padded stride-2 convolutions make 65 -> 33 -> 17 columns: 17 only tiles
    1 x 2 at two vectors of channels, so the convolution computes 18 columns (one more of right
    padding) and slices 17; the result still equals onnxruntime's."""
    from onnx import TensorProto, helper, numpy_helper

    from tests.models import ort_run

    assert cpu_schedule._tile_friendly_rows(17, 2, 32) == 18
    assert cpu_schedule._tile_friendly_rows(14, 4, 32) == 14  # widths that tile well stay
    rng = np.random.default_rng(5)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w", "b"], ["y"], pads=[2, 2, 2, 2], strides=[2, 2])],
        "strided", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 33, 33])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 32, 17, 17])],
        [numpy_helper.from_array(rng.standard_normal((32, 16, 5, 5)).astype(np.float32), "w"),
         numpy_helper.from_array(rng.standard_normal(32).astype(np.float32), "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    text = _graph_passes_text(model)
    if cpu_schedule._lanes(resolve_target("llvm").tvm_target(), 32) == 16:
        assert "padding=[2, 2, 2, 4]" in text and "R.strided_slice" in text, text
    x = rng.standard_normal((1, 16, 33, 33)).astype(np.float32)
    np.testing.assert_allclose(lepton_opt.compile(model).run({"x": x})["y"], ort_run(model, {"x": x})["y"],
                               rtol=1e-4, atol=1e-4)
