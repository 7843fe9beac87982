"""What third-party exporters write, each class in a model built here in the producer's style:
paddle2onnx's ``dim_value: -1`` dims, torch's / TF ports' padding helpers built from constants
(also inside ``If`` branches), opset-12 models that a fusion raises to opset 23, and the
attention blocks Hugging Face transformers exports. Numerics against onnxruntime."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.parser
import pytest
from onnx import TensorProto, helper, numpy_helper

import lepton_opt
from lepton_opt.passes import registry
from lepton_opt.targets.artifact import PartitionedModel
from tests.models import ort_run


def _weights(rng, *shape):
    return (rng.standard_normal(shape) / np.sqrt(np.prod(shape[1:]))).astype(np.float32)


def _assert_matches(model, feeds, atol=1e-4, **compile_options):
    expected = ort_run(model, feeds)
    got = lepton_opt.compile(model, **compile_options).run(feeds)
    for name, ref in expected.items():
        assert got[name].shape == ref.shape, name
        np.testing.assert_allclose(got[name], ref, atol=atol, rtol=1e-4, err_msg=name)


def _assert_compiles_whole_for_each(model, feeds_list, *, atol, rtol=1e-7):
    """Compiled without input shapes: one compiled module (no onnxruntime segment) that matches
    onnxruntime on each of ``feeds_list`` (other batch sizes and lengths)."""
    compiled = lepton_opt.compile(model)
    assert not isinstance(compiled, PartitionedModel)
    for feeds in feeds_list:
        expected = ort_run(model, feeds)
        got = compiled.run(feeds)
        for name, ref in expected.items():
            np.testing.assert_allclose(got[name], ref, atol=atol, rtol=rtol, err_msg=name)


def _ids_model(name: str, nodes, inits: dict, width: int) -> onnx.ModelProto:
    """ids [batch, sequence] int64 -> y [batch, sequence, width] float, opset 14."""
    graph = helper.make_graph(
        nodes, name, [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", "sequence"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "sequence", width])],
        [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])


# ----------------------------------------------------------------- dim_value: -1 (paddle2onnx)
def _paddle_style_cnn() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [-1, 3, -1, -1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [-1, 4, -1, -1])
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["y"])]
    graph = helper.make_graph(nodes, "paddle", [x], [y], [numpy_helper.from_array(_weights(rng, 4, 3, 3, 3), "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)], producer_name="PaddlePaddle")


def test_dim_value_minus_one_is_a_dynamic_dim_that_input_shape_fixes(tmp_path):
    model = _paddle_style_cnn()
    feeds = {"x": np.random.default_rng(1).standard_normal((1, 3, 12, 20)).astype(np.float32)}
    _assert_matches(model, feeds, input_shapes={"x": [1, 3, 12, 20]})
    summary = lepton_opt.inspect_model(model)
    assert summary.inputs[0]["shape"] == ["?", 3, "?", "?"]
    path = tmp_path / "paddle.onnx"
    onnx.save(model, path)
    from click.testing import CliRunner

    from lepton_opt.cli import main

    result = CliRunner().invoke(main, ["compile", str(path), "--input-shape", "x:1x3x12x20", "-o",
                                       str(tmp_path / "out.lepton")])
    assert result.exit_code == 0, result.output


# ----------------------------------------------------------------- padding helpers from constants
# torch's export of F.pad with pads it cannot see as constants (TF-'same' ports compute them):
# ConstantOfShape -> Concat -> Reshape -> Slice (negative step) -> Transpose -> Reshape -> Cast -> Pad.
_PAD_HELPER = '''
  zshape = Constant <value = int64[1] {4}> ()
  zeros = ConstantOfShape <value = int64[1] {0}> (zshape)
  full = Concat <axis = 0> (given, zeros)
  shp = Constant <value = int64[2] {-1, 2}> ()
  r = Reshape (full, shp)
  st = Constant <value = int64[1] {-1}> ()
  en = Constant <value = int64[1] {-9223372036854775807}> ()
  ax = Constant <value = int64[1] {0}> ()
  stp = Constant <value = int64[1] {-1}> ()
  rev = Slice (r, st, en, ax, stp)
  t = Transpose <perm = [1, 0]> (rev)
  flat = Constant <value = int64[1] {-1}> ()
  pads = Reshape (t, flat)
  pads64 = Cast <to = 7> (pads)
'''


def _pad_helper_model(inside_if: bool) -> onnx.ModelProto:
    body = _PAD_HELPER + "  padded = Pad (x, pads64)\n"
    if not inside_if:
        text = ('<ir_version: 8, opset_import: ["" : 13]>\ng (float[1,3,9,9] x) => (float[1,4,4,4] y) '
                '\n{\n  given = Constant <value = int64[4] {0, 1, 0, 1}> ()\n' + body
                + '  y = Conv <strides = [2, 2]> (padded, w)\n}\n')
    else:
        # The cond depends on the data; each branch pads with its own constant helper.
        def branch(name, values):
            lines = "".join(f"    {line.strip()}\n" for line in
                            (f"given = Constant <value = int64[4] {{{values}}}> ()\n" + body).splitlines() if line.strip())
            return f"{name} () => (float[1,3,10,10] padded) {{\n{lines}  }}"
        text = ('<ir_version: 8, opset_import: ["" : 13]>\ng (float[1,3,9,9] x) => (float[1,4,4,4] y) '
                '\n{\n  s = ReduceSum <keepdims = 0> (x)\n  zero = Constant <value = float {0}> ()\n'
                '  cond = Greater (s, zero)\n'
                f'  padded = If (cond) <then_branch = {branch("then_g", "0, 1, 0, 1")}, '
                f'else_branch = {branch("else_g", "1, 0, 1, 0")}>\n'
                '  y = Conv <strides = [2, 2]> (padded, w)\n}\n')
    model = onnx.parser.parse_model(text)
    weight = numpy_helper.from_array(_weights(np.random.default_rng(2), 4, 3, 3, 3), "w")
    model.graph.initializer.append(weight)
    onnx.checker.check_model(model, full_check=True)
    return model


@pytest.mark.parametrize("inside_if", [False, True])
def test_padding_helper_built_from_constants_folds(inside_if):
    model = _pad_helper_model(inside_if)
    result = lepton_opt.optimize(model)
    helper_ops = {"ConstantOfShape", "Concat", "Slice", "Transpose", "Reshape", "Cast"}
    assert not helper_ops & set(result.ops_after), result.ops_after
    assert not result.warnings
    feeds = {"x": np.random.default_rng(3).standard_normal((1, 3, 9, 9)).astype(np.float32)}
    np.testing.assert_allclose(ort_run(result.model, feeds)["y"], ort_run(model, feeds)["y"], atol=1e-5)
    _assert_matches(model, feeds)
    if inside_if:  # the other branch too
        _assert_matches(model, {"x": -np.abs(feeds["x"])})


def test_onnxruntime_folds_what_the_onnxscript_folder_declines():
    # Split has several outputs, which onnxscript's folder skips; here it splits a constant shape.
    text = '''<ir_version: 8, opset_import: ["" : 18]>
g (float[2,12] x) => (float[2,3,4] y) {
  c = Constant <value = int64[4] {2, 3, 4, 9}> ()
  a, b = Split <num_outputs = 2> (c)
  four = Constant <value = int64[1] {4}> ()
  s = Concat <axis = 0> (a, four)
  start = Constant <value = int64[1] {0}> ()
  end = Constant <value = int64[1] {3}> ()
  target = Slice (s, start, end)
  y = Reshape (x, target)
}'''
    model = onnx.parser.parse_model(text)
    result = lepton_opt.optimize(model, passes=["fold-constants", "fold-constants-ort", "remove-dead-nodes"])
    assert result.ops_after == {"Reshape": 1}
    x = np.arange(24, dtype=np.float32).reshape(2, 12)
    np.testing.assert_array_equal(ort_run(result.model, {"x": x})["y"], x.reshape(2, 3, 4))


# ----------------------------------------------------------------- raising an old opset
def _opset12_attention(softmax_axis: int = 3) -> onnx.ModelProto:
    """A bare attention core at opset 12, whose output goes through Squeeze with an ``axes``
    attribute (an input from opset 13 on)."""
    text = f'''<ir_version: 7, opset_import: ["" : 12]>
g (float[1,2,16,16] q, float[1,2,16,16] k, float[1,2,16,16] v) => (float[2,16,16] y) {{
  kt = Transpose <perm = [0, 1, 3, 2]> (k)
  s = MatMul (q, kt)
  c = Constant <value = float {{4.0}}> ()
  scaled = Div (s, c)
  p = Softmax <axis = {softmax_axis}> (scaled)
  o = MatMul (p, v)
  y = Squeeze <axes = [0]> (o)
}}'''
    return onnx.parser.parse_model(text)


def test_raising_opset_12_for_attention_converts_squeeze_axes():
    model = _opset12_attention()
    result = lepton_opt.optimize(model)
    assert not result.warnings
    assert result.ops_after.get("Attention") == 1
    optimized = result.model
    onnx.checker.check_model(optimized, full_check=True)
    assert optimized.opset_import[0].version >= 23
    squeeze = next(n for n in optimized.graph.node if n.op_type == "Squeeze")
    assert len(squeeze.input) == 2 and not squeeze.attribute
    rng = np.random.default_rng(4)
    feeds = {n: rng.standard_normal((1, 2, 16, 16)).astype(np.float32) for n in "qkv"}
    np.testing.assert_allclose(ort_run(optimized, feeds)["y"], ort_run(model, feeds)["y"], atol=1e-5)
    _assert_matches(model, feeds)


def test_an_old_softmax_over_a_flattened_view_refuses_the_raise():
    model = _opset12_attention(softmax_axis=1)  # opset 12: softmax over axes 1.. flattened
    result = lepton_opt.optimize(model)
    assert "Attention" not in result.ops_after
    refusals = registry.PASSES["fuse-attention"]().refusals(lepton_opt.load(model))
    assert any("meaning changed at opset 13" in line or "Softmax is not over the last axis" in line
               for line in refusals), refusals


# ----------------------------------------------------------------- graceful lowering
def test_a_fused_op_the_lowering_refuses_is_compiled_as_what_it_replaced(monkeypatch):
    from lepton_opt.targets import ops
    from lepton_opt.targets.lower import LoweringError

    def refuses(ctx, *inputs, **attrs):
        raise LoweringError("no kernel for these shapes (test)")

    monkeypatch.setitem(ops.OWN_CONVERTERS, "Gelu", refuses)
    text = '''<ir_version: 8, opset_import: ["" : 18]>
g (float[2,16] x) => (float[2,16] y) {
  r2 = Constant <value = float {1.4142135}> ()
  one = Constant <value = float {1.0}> ()
  half = Constant <value = float {0.5}> ()
  e = Erf (Div (x, r2))
  y = Mul (Mul (x, Add (e, one)), half)
}'''
    text = text.replace("  e = Erf (Div (x, r2))\n", "  d = Div (x, r2)\n  e = Erf (d)\n")
    text = text.replace("  y = Mul (Mul (x, Add (e, one)), half)\n",
                        "  a = Add (e, one)\n  m = Mul (x, a)\n  y = Mul (m, half)\n")
    model = onnx.parser.parse_model(text)
    assert "Gelu" in lepton_opt.optimize(model).ops_after
    feeds = {"x": np.random.default_rng(5).standard_normal((2, 16)).astype(np.float32)}
    with pytest.warns(UserWarning, match="fuse-gelu rewrote it did not compile"):
        compiled = lepton_opt.compile(model)
    assert "fuse-gelu" not in compiled.manifest["passes"]
    assert "no kernel for these shapes" in compiled.manifest["passes_refused_by_lowering"]["fuse-gelu"]
    np.testing.assert_allclose(compiled.run(feeds)["y"], ort_run(model, feeds)["y"], atol=1e-5)


# ----------------------------------------------------------------- Hugging Face attention blocks
H_HEADS, H_DIM, H_SEQ = 2, 16, 8
H_HIDDEN = H_HEADS * H_DIM


def _hf_attention(style: str) -> onnx.ModelProto:
    """One transformers self-attention block as torch exports it, x [1, S, hidden] and an int64
    padding mask [1, S] (``style`` "sdpa": boolean mask Where(m, 0, -inf), Q and K^T scaled by
    sqrt(scale), softmax NaN guard; "eager": additive (1 - mask) * finfo.min, scores * scale;
    "causal": GPT-style SDPA with a constant lower-triangular boolean mask, no padding mask)."""
    rng = np.random.default_rng(7)
    inits = {f"w{t}": _weights(rng, H_HIDDEN, H_HIDDEN) for t in "qkvo"}
    inits.update({f"b{t}": rng.standard_normal(H_HIDDEN).astype(np.float32) * 0.1 for t in "qkvo"})
    inits["split"] = np.array([1, H_SEQ, H_HEADS, H_DIM], np.int64)
    inits["merge"] = np.array([1, H_SEQ, H_HIDDEN], np.int64)
    nodes = []
    for t, perm in (("q", [0, 2, 1, 3]), ("k", [0, 2, 1, 3]), ("v", [0, 2, 1, 3])):
        nodes += [helper.make_node("MatMul", ["x", f"w{t}"], [f"{t}m"]),
                  helper.make_node("Add", [f"{t}m", f"b{t}"], [f"{t}p"]),
                  helper.make_node("Reshape", [f"{t}p", "split"], [f"{t}4"]),
                  helper.make_node("Transpose", [f"{t}4"], [f"{t}h"], perm=perm)]
    nodes.append(helper.make_node("Transpose", ["kh"], ["kt"], perm=[0, 1, 3, 2]))
    if style == "eager":
        inits["scale"] = np.array(H_DIM ** -0.5, np.float32)
        inits["one"] = np.array(1.0, np.float32)
        inits["fmin"] = np.array(np.finfo(np.float32).min, np.float32)
        inits["axes12"] = np.array([1, 2], np.int64)
        nodes += [helper.make_node("MatMul", ["qh", "kt"], ["s"]), helper.make_node("Mul", ["s", "scale"], ["ss"]),
                  helper.make_node("Unsqueeze", ["attention_mask", "axes12"], ["m4"]),
                  helper.make_node("Cast", ["m4"], ["mf"], to=TensorProto.FLOAT),
                  helper.make_node("Sub", ["one", "mf"], ["inv"]), helper.make_node("Mul", ["inv", "fmin"], ["bias"]),
                  helper.make_node("Add", ["ss", "bias"], ["sm"]),
                  helper.make_node("Softmax", ["sm"], ["p"], axis=-1),
                  helper.make_node("MatMul", ["p", "vh"], ["ctx"])]
    else:
        inits["root"] = np.array(H_DIM ** -0.25, np.float32)
        inits["zero"] = np.array(0.0, np.float32)
        inits["ninf"] = np.array(-np.inf, np.float32)
        nodes += [helper.make_node("Mul", ["qh", "root"], ["qs"]), helper.make_node("Mul", ["kt", "root"], ["ks"]),
                  helper.make_node("MatMul", ["qs", "ks"], ["s"])]
        if style == "sdpa":
            inits["axes12"] = np.array([1, 2], np.int64)
            inits["full"] = np.array([1, 1, H_SEQ, H_SEQ], np.int64)
            nodes += [helper.make_node("Cast", ["attention_mask"], ["mb"], to=TensorProto.BOOL),
                      helper.make_node("Unsqueeze", ["mb", "axes12"], ["m4"]),
                      helper.make_node("Expand", ["m4", "full"], ["mask"])]
        else:
            inits["causal"] = np.tril(np.ones((1, 1, H_SEQ, H_SEQ), bool))
            nodes.append(helper.make_node("Identity", ["causal"], ["mask"]))
        nodes += [helper.make_node("Where", ["mask", "zero", "ninf"], ["bias"]),
                  helper.make_node("Add", ["s", "bias"], ["sm"]),
                  helper.make_node("Softmax", ["sm"], ["p0"], axis=-1),
                  helper.make_node("IsNaN", ["p0"], ["nan"]),
                  helper.make_node("Where", ["nan", "zero", "p0"], ["p"]),
                  helper.make_node("MatMul", ["p", "vh"], ["ctx"])]
    nodes += [helper.make_node("Transpose", ["ctx"], ["merged"], perm=[0, 2, 1, 3]),
              helper.make_node("Reshape", ["merged", "merge"], ["c"]),
              helper.make_node("MatMul", ["c", "wo"], ["om"]), helper.make_node("Add", ["om", "bo"], ["y"])]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, H_SEQ, H_HIDDEN])]
    if style != "causal":
        inputs.append(helper.make_tensor_value_info("attention_mask", TensorProto.INT64, [1, H_SEQ]))
    graph = helper.make_graph(nodes, f"hf_{style}", inputs,
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, H_SEQ, H_HIDDEN])],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


@pytest.mark.parametrize("style", ["sdpa", "eager", "causal"])
def test_transformers_attention_fuses_and_runs_the_fused_kernel(style):
    from tests.targets.test_fused_ops import _cpu_kernels

    model = _hf_attention(style)
    result = lepton_opt.optimize(model)
    assert result.ops_after.get("Attention") == 1, result.ops_after
    assert "Softmax" not in result.ops_after and not result.warnings
    kernels = _cpu_kernels(result.model)  # the optimized model: what compile lowers
    assert [rule for name, rule in kernels.items() if name.startswith("attention")] == ["attention"], kernels
    feeds = {"x": np.random.default_rng(8).standard_normal((1, H_SEQ, H_HIDDEN)).astype(np.float32)}
    if style != "causal":
        feeds["attention_mask"] = np.array([[1] * (H_SEQ - 3) + [0] * 3], np.int64)
    _assert_matches(model, feeds)
    if style == "sdpa":  # a fully masked sequence: every row NaN before the guard, 0 after it
        _assert_matches(model, {**feeds, "attention_mask": np.zeros((1, H_SEQ), np.int64)})


def test_one_dim_name_for_several_unknown_dims_takes_the_shapes_given():
    # paddle2onnx names every free dim "?": H and W are both "?" yet differ at run time.
    model = _paddle_style_cnn()
    for dim in (*model.graph.input[0].type.tensor_type.shape.dim[2:], *model.graph.output[0].type.tensor_type.shape.dim[2:]):
        dim.dim_param = "?"
    feeds = {"x": np.random.default_rng(9).standard_normal((1, 3, 8, 24)).astype(np.float32)}
    _assert_matches(model, feeds, input_shapes={"x": [1, 3, 8, 24]})


def test_a_wrong_declared_output_shape_is_not_trusted():
    # An exporter declared [1, seqlen] for what really is [T, classes] (ddddocr's captcha OCR
    # model); onnxruntime ignores the declaration, and so must every pass.
    text = '''<ir_version: 8, opset_import: ["" : 13]>
g (float[4,6] x) => (float[1,n] y) {
  s = Shape (x)
  start = Constant <value = int64[1] {0}> ()
  end = Constant <value = int64[1] {1}> ()
  first = Slice (s, start, end)
  rest = Constant <value = int64[1] {-1}> ()
  target = Concat <axis = 0> (first, rest)
  y = Reshape (x, target)
}'''
    model = onnx.parser.parse_model(text)
    x = np.arange(24, dtype=np.float32).reshape(4, 6)
    got = lepton_opt.compile(model).run({"x": x})["y"]
    np.testing.assert_array_equal(got, x)
    np.testing.assert_array_equal(ort_run(lepton_opt.optimize(model).model, {"x": x})["y"], x)


# ----------------------------------------------------------------- Loop (tf2onnx while loops)
def _while_loop_model(with_trip_count: bool) -> onnx.ModelProto:
    """tf2onnx's shape of a Keras RNN: a Loop without M (or with it) whose condition compares a
    counter with the sequence length, carrying a state and a weight, scanning the states."""
    rng = np.random.default_rng(11)
    body = helper.make_graph(
        [helper.make_node("Constant", [], ["one"], value=numpy_helper.from_array(np.array(1, np.int64))),
         helper.make_node("Add", ["cnt", "one"], ["cnt2"]),
         helper.make_node("Constant", [], ["limit"], value=numpy_helper.from_array(np.array(5, np.int64))),
         helper.make_node("Less", ["cnt2", "limit"], ["cout"]),
         helper.make_node("Gather", ["xs", "it"], ["step"], axis=0),
         helper.make_node("MatMul", ["h", "w"], ["hw"]),
         helper.make_node("Add", ["hw", "step"], ["pre"]),
         helper.make_node("Tanh", ["pre"], ["h2"]),
         helper.make_node("Identity", ["w"], ["w2"]),
         helper.make_node("Identity", ["h2"], ["scan"])],
        "body",
        [helper.make_tensor_value_info("it", TensorProto.INT64, []),
         helper.make_tensor_value_info("cin", TensorProto.BOOL, []),
         helper.make_tensor_value_info("cnt", TensorProto.INT64, []),
         helper.make_tensor_value_info("h", TensorProto.FLOAT, [2, 4]),
         helper.make_tensor_value_info("w", TensorProto.FLOAT, [4, 4])],
        [helper.make_tensor_value_info("cout", TensorProto.BOOL, []),
         helper.make_tensor_value_info("cnt2", TensorProto.INT64, []),
         helper.make_tensor_value_info("h2", TensorProto.FLOAT, [2, 4]),
         helper.make_tensor_value_info("w2", TensorProto.FLOAT, [4, 4]),
         helper.make_tensor_value_info("scan", TensorProto.FLOAT, [2, 4])])
    inits = {"zero": np.array(0, np.int64), "n": np.array(5, np.int64), "h0": np.zeros((2, 4), np.float32),
             "w": _weights(rng, 4, 4), "m": np.array(7, np.int64)}
    nodes = [helper.make_node("Less", ["zero", "n"], ["c0"]),
             helper.make_node("Loop", ["m" if with_trip_count else "", "c0", "zero", "h0", "w"],
                              ["count", "h", "w_out", "states"], body=body),
             helper.make_node("ReverseSequence", ["states", "lens"], ["reversed"], batch_axis=1, time_axis=0)]
    graph = helper.make_graph(nodes, "while", [helper.make_tensor_value_info("xs", TensorProto.FLOAT, [5, 2, 4]),
                                               helper.make_tensor_value_info("lens", TensorProto.INT64, [2])],
                              [helper.make_tensor_value_info("h", TensorProto.FLOAT, [2, 4]),
                               helper.make_tensor_value_info("reversed", TensorProto.FLOAT, [5, 2, 4])],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


@pytest.mark.parametrize("with_trip_count", [False, True])
def test_a_while_loop_with_a_compile_time_trip_count_is_unrolled(with_trip_count):
    model = _while_loop_model(with_trip_count)
    feeds = {"xs": np.random.default_rng(12).standard_normal((5, 2, 4)).astype(np.float32),
             "lens": np.array([5, 3], np.int64)}
    _assert_matches(model, feeds, atol=1e-5)


def test_torch_resize_with_an_empty_scales_and_a_one_output_split():
    # torchvision's transform: Resize(x, roi=[], scales=[], sizes); unbind of a size-1 dim: Split
    # with a single output.
    text = '''<ir_version: 7, opset_import: ["" : 11]>
g (float[1,3,6,8] x) => (float[1,3,12,16] y, float[1,3,12,16] z) {
  roi = Constant <value = float[0] {}> ()
  scales = Constant <value = float[0] {}> ()
  sizes = Constant <value = int64[4] {1, 3, 12, 16}> ()
  r = Resize <mode = "linear", coordinate_transformation_mode = "half_pixel"> (x, roi, scales, sizes)
  y = Identity (r)
  z = Split <axis = 0, split = [1]> (r)
}'''
    model = onnx.parser.parse_model(text)
    feeds = {"x": np.random.default_rng(13).standard_normal((1, 3, 6, 8)).astype(np.float32)}
    _assert_matches(model, feeds, atol=1e-5)


def test_a_conv1d_feeding_an_instance_norm_keeps_the_norm_on_contiguous_rows():
    # wav2vec2's feature extractor: Conv1d -> GroupNorm(C, C), exported as InstanceNormalization.
    # With the conv as a channels-last conv2d the norm reduced along a strided axis (732 ms).
    from tests.targets.test_fused_ops import _cpu_kernels

    rng = np.random.default_rng(14)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], strides=[5]),
             helper.make_node("InstanceNormalization", ["c", "s", "b"], ["y"])]
    inits = {"w": _weights(rng, 32, 1, 10), "s": rng.random(32).astype(np.float32) + 0.5,
             "b": rng.random(32).astype(np.float32)}
    graph = helper.make_graph(nodes, "wav", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 400])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    kernels = _cpu_kernels(model)
    assert [rule for name, rule in kernels.items() if "instance_norm" in name] == ["rows"], kernels
    _assert_matches(model, {"x": rng.standard_normal((1, 1, 400)).astype(np.float32)}, atol=1e-4)


def test_a_size_check_on_a_data_dependent_tensor_runs_with_the_nonzero_in_onnxruntime():
    """torchvision's detectors export `if boxes.numel() == 0` as Equal(ReduceProd(Shape(...)), 0)
    behind a NonZero: the element count is a size known only at run time (Faster R-CNN failed
    with "depends on a dynamic dimension" although every input was static)."""
    rng = np.random.default_rng(0)
    c = lambda name, v, dt=np.int64: numpy_helper.from_array(np.array(v, dt), name)  # noqa: E731
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("Reshape", ["c", "minus1"], ["flat"]),
             helper.make_node("Greater", ["flat", "zero_f"], ["pos"]),
             helper.make_node("NonZero", ["pos"], ["nz"]),
             helper.make_node("Squeeze", ["nz", "zero_axis"], ["idx"]),
             helper.make_node("Gather", ["flat", "idx"], ["kept"], axis=0),
             helper.make_node("Shape", ["kept"], ["shape"]),
             helper.make_node("ReduceProd", ["shape"], ["numel"], keepdims=0),
             helper.make_node("Equal", ["numel", "zero_i"], ["empty"]),
             helper.make_node("ReduceSum", ["kept"], ["total"], keepdims=0)]
    graph = helper.make_graph(nodes, "numel", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("empty", TensorProto.BOOL, []),
                               helper.make_tensor_value_info("total", TensorProto.FLOAT, [])],
                              [numpy_helper.from_array(_weights(rng, 4, 3, 3, 3), "w"), c("zero_f", 0, np.float32),
                               c("zero_i", 0), c("zero_axis", [0]), c("minus1", [-1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    compiled = lepton_opt.compile(model)
    empties = set()
    for scale in (1.0, 0.0):  # some kept values, then none (the empty branch of the check)
        x = (rng.standard_normal((1, 3, 8, 8)) * scale).astype(np.float32)
        expected, got = ort_run(model, {"x": x}), compiled.run({"x": x})
        assert got["empty"] == expected["empty"]
        np.testing.assert_allclose(got["total"], expected["total"], rtol=1e-5, atol=1e-5)
        empties.add(bool(expected["empty"]))
    assert empties == {True, False}


def test_a_range_over_a_dynamic_dim_is_a_symbolic_range():
    """A decoder step's positions, Range(past, past + 1), with the past length left dynamic."""
    c = lambda name, v: numpy_helper.from_array(np.array(v, np.int64), name)  # noqa: E731
    nodes = [helper.make_node("Shape", ["past"], ["shape"]),
             helper.make_node("Gather", ["shape", "two"], ["n"], axis=0),
             helper.make_node("Add", ["n", "one"], ["limit"]),
             helper.make_node("Range", ["n", "limit", "one"], ["positions"]),
             helper.make_node("Cast", ["positions"], ["y"], to=TensorProto.FLOAT)]
    graph = helper.make_graph(nodes, "range", [helper.make_tensor_value_info("past", TensorProto.FLOAT,
                                                                             [1, 2, "past_sequence", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])], [c("two", 2), c("one", 1)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    compiled = lepton_opt.compile(model)  # the past length stays dynamic
    for length in (3, 9):
        feeds = {"past": np.zeros((1, 2, length, 4), np.float32)}
        np.testing.assert_array_equal(compiled.run(feeds)["y"], ort_run(model, feeds)["y"])


def test_an_input_shape_with_a_name_in_it_is_a_one_line_error():
    from lepton_opt.errors import ShapeError

    with pytest.raises(ShapeError, match="give whole numbers"):
        lepton_opt.load(_paddle_style_cnn(), input_shapes={"x": [1, 3, "h", 32]})


# -------------------------------------------- weight-only 4-bit models (onnxruntime's quantizer)
@pytest.mark.parametrize("form", ["QOperator", "QDQ"])
@pytest.mark.parametrize("symmetric", [False, True])
def test_weight_only_4bit_models_from_onnxruntimes_quantizer(form, symmetric):
    """The ``q4`` LLM exports: onnxruntime's MatMulNBitsQuantizer writes MatMulNBits and
    GatherBlockQuantized (QOperator) or block-wise int4/uint4 DequantizeLinear (QDQ, opset 21).
    Both become float weights at compile time; the result matches onnxruntime's."""
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer
    from onnxruntime.quantization.quant_utils import QuantFormat

    rng = np.random.default_rng(0)
    k, hidden, n, vocab = 96, 160, 72, 50
    nodes = [helper.make_node("Gather", ["emb", "ids"], ["e"]), helper.make_node("MatMul", ["e", "w1"], ["h"]),
             helper.make_node("Relu", ["h"], ["r"]), helper.make_node("MatMul", ["r", "w2"], ["y"])]
    inits = [numpy_helper.from_array(rng.standard_normal((vocab, k)).astype(np.float32), "emb"),
             numpy_helper.from_array(_weights(rng, k, hidden), "w1"),
             numpy_helper.from_array(_weights(rng, hidden, n), "w2")]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("ids", TensorProto.INT64, [2, 7])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 7, n])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
    quant_format = QuantFormat.QOperator if form == "QOperator" else QuantFormat.QDQ
    config = DefaultWeightOnlyQuantConfig(block_size=32, is_symmetric=symmetric, quant_format=quant_format,
                                          op_types_to_quantize=("MatMul", "Gather") if form == "QOperator"
                                          else ("MatMul",))
    quantizer = MatMulNBitsQuantizer(model, algo_config=config)
    quantizer.process()
    quantized = quantizer.model.model
    written = {n.op_type for n in quantized.graph.node}
    assert written >= ({"MatMulNBits", "GatherBlockQuantized"} if form == "QOperator" else {"DequantizeLinear"})
    compiled = lepton_opt.compile(quantized)
    assert not isinstance(compiled, PartitionedModel)
    feeds = {"ids": rng.integers(0, vocab, (2, 7))}
    np.testing.assert_allclose(compiled.run(feeds)["y"], ort_run(quantized, feeds)["y"], atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------- skl2onnx's ZipMap (maps)
def test_zipmap_output_is_one_line_naming_the_node_and_the_remedy(tmp_path):
    """skl2onnx's default classifier output is a ZipMap: a sequence of maps, which onnx-ir cannot
    read. The user gets one line naming the output, the node and the converter option, not the
    reader's internal error; the model file is untouched."""
    from tests.test_cli import assert_user_error, lepton

    nodes = [helper.make_node("LinearClassifier", ["x"], ["label", "scores"], domain="ai.onnx.ml",
                              classlabels_ints=[0, 1], coefficients=[0.5, -0.5, 1.0, 0.2], intercepts=[0.0, 0.1]),
             helper.make_node("ZipMap", ["scores"], ["probabilities"], domain="ai.onnx.ml", classlabels_int64s=[0, 1],
                              name="ZipMap")]
    seq_map = helper.make_sequence_type_proto(helper.make_map_type_proto(
        TensorProto.INT64, helper.make_tensor_type_proto(TensorProto.FLOAT, [])))
    graph = helper.make_graph(nodes, "skl", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 2])],
                              [helper.make_tensor_value_info("label", TensorProto.INT64, [None]),
                               helper.make_value_info("probabilities", seq_map)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid("ai.onnx.ml", 1)])
    path = tmp_path / "zipmap.onnx"
    onnx.save(model, path)
    before = path.read_bytes()
    ort_run(model, {"x": np.ones((2, 2), np.float32)})  # onnxruntime runs it
    for command in ("inspect", "compile"):
        line = assert_user_error(lepton(command, path), "'probabilities' made by ZipMap node 'ZipMap'",
                                 "sequence(map(int64, tensor(float32)))", "'zipmap': False")
        assert "_deserialize_graph" not in line
    assert path.read_bytes() == before


# ----------------------------------------------------------------- RoBERTa position ids, dynamic
def test_roberta_position_ids_compile_with_dynamic_batch_and_sequence():
    """RoBERTa / XLM-R / MPNet exports compute position ids as CumSum over the padding mask of
    the input ids. Compiled without --input-shape (batch and sequence symbolic), TVM's
    layout-free-buffer pass re-declared the scan kernel's output with fresh shape variables and
    the build failed; it now runs for any batch and length, as onnxruntime does."""
    rng = np.random.default_rng(0)
    table = rng.standard_normal((40, 8)).astype(np.float32)
    nodes = [helper.make_node("Equal", ["ids", "pad"], ["eq"]), helper.make_node("Not", ["eq"], ["ne"]),
             helper.make_node("Cast", ["ne"], ["m"], to=TensorProto.INT32),
             helper.make_node("CumSum", ["m", "axis"], ["cs"]), helper.make_node("Mul", ["cs", "m"], ["pm"]),
             helper.make_node("Cast", ["pm"], ["pm64"], to=TensorProto.INT64),
             helper.make_node("Add", ["pm64", "pad"], ["pos"]),
             helper.make_node("Gather", ["table", "pos"], ["emb"]), helper.make_node("MatMul", ["emb", "w"], ["y"])]
    model = _ids_model("roberta_positions", nodes, {"pad": np.array(1, np.int64), "axis": np.array(1, np.int32),
                                                    "table": table, "w": _weights(rng, 8, 4)}, 4)
    feeds_list = []
    for batch, length in ((1, 7), (3, 19)):
        ids = rng.integers(2, 30, (batch, length)).astype(np.int64)
        ids[:, length - 3:] = 1  # padding
        feeds_list.append({"ids": ids})
    _assert_compiles_whole_for_each(model, feeds_list, atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------- BERT buffers cut to the length
def test_bert_position_and_token_type_buffers_cut_to_a_dynamic_length():
    """BERT-family exports without a token_type_ids input (ELECTRA, MobileBERT, DistilBERT's
    positions) cut constant buffers to the input's length: Slice(buffer, 0, Shape(ids)[1]). With the
    length symbolic the Slice was refused ("Slice's ends needs a fixed value"); it now compiles for
    any length."""
    rng = np.random.default_rng(1)
    positions = rng.standard_normal((64, 8)).astype(np.float32)
    nodes = [helper.make_node("Shape", ["ids"], ["shape"]),
             helper.make_node("Gather", ["shape", "one"], ["length"], axis=0),
             helper.make_node("Unsqueeze", ["length", "zero_axis"], ["end"]),
             helper.make_node("Slice", ["position_ids", "zero", "end", "one_axis"], ["pos"]),
             helper.make_node("Slice", ["token_types", "zero", "end", "one_axis"], ["types"]),
             helper.make_node("Gather", ["words", "ids"], ["w"]),
             helper.make_node("Gather", ["table", "pos"], ["p"]),
             helper.make_node("Cast", ["types"], ["tf"], to=TensorProto.FLOAT),
             helper.make_node("Unsqueeze", ["tf", "last_axis"], ["t3"]),
             helper.make_node("Add", ["w", "p"], ["wp"]), helper.make_node("Add", ["wp", "t3"], ["y"])]
    inits = {"one": np.array(1, np.int64), "zero_axis": np.array([0], np.int64), "zero": np.array([0], np.int64),
             "one_axis": np.array([1], np.int64), "last_axis": np.array([2], np.int64),
             "position_ids": np.arange(64, dtype=np.int64)[None], "token_types": np.zeros((1, 64), np.int64),
             "words": rng.standard_normal((50, 8)).astype(np.float32), "table": positions}
    model = _ids_model("bert_buffers", nodes, inits, 8)
    _assert_compiles_whole_for_each(model, [{"ids": rng.integers(0, 50, shape).astype(np.int64)}
                                            for shape in ((1, 5), (2, 33))], atol=1e-6)


# ----------------------------------------------------------------- wav2vec2-family audio, dynamic
def _positional_conv_model() -> onnx.ModelProto:
    """wav2vec2 / HuBERT / WavLM's positional embedding: a grouped Conv1d with even kernel, the
    last frame dropped (x[..., :-1]), GELU, added back to the frames; and WavLM's position bias
    repeated over the batch (Tile with repeats [batch, 1, 1])."""
    rng = np.random.default_rng(0)
    channels, groups, kernel = 16, 4, 16
    nodes = [helper.make_node("Transpose", ["x"], ["t"], perm=[0, 2, 1]),
             helper.make_node("Conv", ["t", "w", "b"], ["c"], pads=[kernel // 2, kernel // 2], group=groups,
                              kernel_shape=[kernel]),
             helper.make_node("Slice", ["c", "zero", "minus_one", "two"], ["s"]),
             helper.make_node("Gelu", ["s"], ["g"], domain=""),
             helper.make_node("Transpose", ["g"], ["t2"], perm=[0, 2, 1]),
             helper.make_node("Add", ["x", "t2"], ["y"]),
             helper.make_node("Shape", ["x"], ["shape"]), helper.make_node("Gather", ["shape", "zero0"], ["batch"]),
             helper.make_node("Concat", ["batch", "one", "one"], ["repeats"], axis=0),
             helper.make_node("Tile", ["bias", "repeats"], ["bias_b"]),
             helper.make_node("MatMul", ["y", "bias_b"], ["z"])]
    inits = {"w": (rng.standard_normal((channels, channels // groups, kernel)) * 0.1).astype(np.float32),
             "b": rng.standard_normal(channels).astype(np.float32), "zero": np.array([0], np.int64),
             "minus_one": np.array([-1], np.int64), "two": np.array([2], np.int64), "zero0": np.array([0], np.int64),
             "one": np.array([1], np.int64), "bias": rng.standard_normal((1, channels, 8)).astype(np.float32)}
    graph = helper.make_graph(nodes, "w2v2_pos_conv",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "frames", channels])],
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["batch", "frames", 8])],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])


def test_wav2vec2_positional_conv_and_repeated_bias_compile_with_dynamic_frames():
    """Audio encoders are compiled for any length. The dropped last frame was left to the slice's
    clamping, a max/min length no broadcast could match with the frames it is added to (HuBERT:
    "a tensor of unknown rank", then a FuseTIR failure), and Tile refused a symbolic repeat (WavLM);
    both now compile fully, for every batch and length, as onnxruntime runs them."""
    rng = np.random.default_rng(1)
    _assert_compiles_whole_for_each(_positional_conv_model(),
                                    [{"x": rng.standard_normal((batch, frames, 16)).astype(np.float32)}
                                     for batch, frames in ((1, 25), (3, 40))], atol=1e-4, rtol=1e-4)


def test_seeded_verification_of_an_audio_front_end_takes_a_length_it_can_run(tmp_path):
    """A dynamic-length audio model cannot run on one sample (a 400-sample convolution window):
    verification gave up ("onnxruntime cannot run the model"). The seeded inputs now grow the
    length, batch kept at 1, until onnxruntime runs it, and say which length was used."""
    from tests.test_cli import lepton

    rng = np.random.default_rng(2)
    nodes = [helper.make_node("Unsqueeze", ["wave", "one"], ["w3"]),
             helper.make_node("Conv", ["w3", "kernel"], ["frames"], strides=[160]),
             helper.make_node("Relu", ["frames"], ["y"])]
    wave = helper.make_tensor_value_info("wave", TensorProto.FLOAT, ["batch", "samples"])
    graph = helper.make_graph(nodes, "audio", [wave],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8, "frames"])],
                              [numpy_helper.from_array(np.array([1], np.int64), "one"),
                               numpy_helper.from_array(_weights(rng, 8, 1, 400), "kernel")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    report = lepton_opt.verify(lepton_opt.compile(model), model)
    assert report.ok and report.dims == {"samples": 4096}
    path = tmp_path / "audio.onnx"
    onnx.save(model, path)
    result = lepton("compile", path, "-o", tmp_path / "audio.lepton", "--verify")
    assert result.returncode == 0, result.stderr
    assert "seeded inputs (seed 0, samples=4096)" in result.stdout


def test_mobilebert_trigram_embedding_compiles_with_a_dynamic_length():
    """MobileBERT concatenates each token's embedding with its neighbours': pad(x[:, 1:]), x,
    pad(x[:, :-1]). With the length symbolic, the clamped slice lengths plus the padding did not
    simplify to the length of x and the Concat's shape was lost ("a tensor of unknown rank")."""
    rng = np.random.default_rng(3)
    nodes = [helper.make_node("Gather", ["words", "ids"], ["x"]),
             helper.make_node("Slice", ["x", "one", "to_end", "one"], ["after"]),
             helper.make_node("Pad", ["after", "pad_end"], ["after_p"]),
             helper.make_node("Slice", ["x", "zero", "minus_one", "one"], ["before"]),
             helper.make_node("Pad", ["before", "pad_start"], ["before_p"]),
             helper.make_node("Concat", ["after_p", "x", "before_p"], ["tri"], axis=2),
             helper.make_node("MatMul", ["tri", "w"], ["y"])]
    inits = {"words": rng.standard_normal((50, 4)).astype(np.float32), "one": np.array([1], np.int64),
             "to_end": np.array([2**63 - 1], np.int64), "zero": np.array([0], np.int64),
             "minus_one": np.array([-1], np.int64), "pad_end": np.array([0, 0, 0, 0, 1, 0], np.int64),
             "pad_start": np.array([0, 1, 0, 0, 0, 0], np.int64), "w": _weights(rng, 12, 6)}
    model = _ids_model("mobilebert_trigram", nodes, inits, 6)
    _assert_compiles_whole_for_each(model, [{"ids": rng.integers(0, 50, shape).astype(np.int64)}
                                            for shape in ((1, 6), (2, 31))], atol=1e-5)
