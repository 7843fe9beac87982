"""Each simplification pass on a small model: what it removes (op counts), what it must leave
alone, and that onnxruntime gives the same outputs before and after (exactly: these passes
only remove work, they never change arithmetic)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from lepton_opt.passes.registry import SIMPLIFICATION
from tests.models import ort_run
from tests.passes.common import assert_same_outputs, ops, parse, run_passes

HEADER = '<ir_version: 9, opset_import: ["" : 18]>'


def unary_model(body: str, out_type: str = "float[2,3,4]", in_type: str = "float[2,3,4]") -> onnx.ModelProto:
    """``x`` -> body (computing ``t``) -> Relu -> ``y``."""
    return parse(f"""{HEADER}
    g ({in_type} x) => ({out_type} y) {{
        {body}
        y = Relu(t)
    }}""")


# ------------------------------------------------------------------------------ remove-no-ops
NO_OPS = {
    "Identity": "t = Identity(x)",
    "Dropout": "t = Dropout(x)",
    "Dropout(training_mode=false)": """r = Constant <value = float {0.3}> ()
        tm = Constant <value = bool {0}> ()
        t = Dropout(x, r, tm)""",
    "Cast": "t = Cast <to = 1> (x)",
    "Reshape": """s = Constant <value = int64[3] {2, 3, 4}> ()
        t = Reshape(x, s)""",
    "Reshape(0, -1)": """s = Constant <value = int64[3] {0, -1, 4}> ()
        t = Reshape(x, s)""",
    "Expand": """s = Constant <value = int64[2] {3, 1}> ()
        t = Expand(x, s)""",
    "Transpose": "t = Transpose <perm = [0, 1, 2]> (x)",
    "Mul": """c = Constant <value = float[4] {1, 1, 1, 1}> ()
        t = Mul(c, x)""",
    "Add": """c = Constant <value = float {0}> ()
        t = Add(x, c)""",
    "Sub": """c = Constant <value = float[1, 1] {0}> ()
        t = Sub(x, c)""",
    "Div": """c = Constant <value = float {1}> ()
        t = Div(x, c)""",
    "Pad": """p = Constant <value = int64[6] {0, 0, 0, 0, 0, 0}> ()
        t = Pad(x, p)""",
    "Slice": """st = Constant <value = int64[2] {0, -3}> ()
        en = Constant <value = int64[2] {9223372036854775807, 3}> ()
        ax = Constant <value = int64[2] {2, 1}> ()
        t = Slice(x, st, en, ax)""",
    "Concat": "t = Concat <axis = 0> (x)",
}


@pytest.mark.parametrize("case", list(NO_OPS))
def test_remove_no_ops_removes(case):
    op = case.split("(")[0]
    model = unary_model(NO_OPS[case])
    assert ops(model)[op] == 1
    after, result = run_passes(model, "remove-no-ops")
    assert ops(after)[op] == 0
    assert result.table[0].rewrites == 1
    assert_same_outputs(model, after, atol=0)


KEPT = {
    # x * ones of a higher rank broadcasts x to a larger shape: not a no-op
    "Mul(broadcasting)": ("Mul", """c = Constant <value = float[2, 1, 1, 1] {1, 1}> ()
        t = Mul(x, c)""", "float[2,2,3,4]"),
    "Mul(by 2)": ("Mul", """c = Constant <value = float {2}> ()
        t = Mul(x, c)""", "float[2,3,4]"),
    "Sub(0 - x)": ("Sub", """c = Constant <value = float {0}> ()
        t = Sub(c, x)""", "float[2,3,4]"),
    "Cast(to double)": ("Cast", "t = Cast <to = 11> (x)", "double[2,3,4]"),
    "Reshape(other shape)": ("Reshape", """s = Constant <value = int64[2] {6, 4}> ()
        t = Reshape(x, s)""", "float[6,4]"),
    "Expand(larger)": ("Expand", """s = Constant <value = int64[3] {2, 3, 4}> ()
        t = Expand(x, s)""", "float[2,3,4]"),
    "Transpose(permuting)": ("Transpose", "t = Transpose <perm = [0, 2, 1]> (x)", "float[2,4,3]"),
    "Pad(non-zero)": ("Pad", """p = Constant <value = int64[6] {0, 0, 1, 0, 0, 0}> ()
        t = Pad(x, p)""", "float[2,3,5]"),
    "Slice(part)": ("Slice", """st = Constant <value = int64[1] {1}> ()
        en = Constant <value = int64[1] {3}> ()
        ax = Constant <value = int64[1] {1}> ()
        t = Slice(x, st, en, ax)""", "float[2,2,4]"),
}


@pytest.mark.parametrize("case", list(KEPT))
def test_remove_no_ops_keeps(case):
    op, body, out_type = KEPT[case]
    in_type = "float[1,3,4]" if case == "Expand(larger)" else "float[2,3,4]"
    model = unary_model(body, out_type=out_type, in_type=in_type)
    after, result = run_passes(model, "remove-no-ops")
    assert ops(after)[op] == 1
    assert result.table[0].rewrites == 0


def test_remove_no_ops_keeps_dropout_whose_mask_is_used():
    model = parse(f"""{HEADER}
    g (float[2,3] x) => (float[2,3] y, bool[2,3] mask) {{
        y, mask = Dropout(x)
    }}""")
    after, _ = run_passes(model, "remove-no-ops")
    assert ops(after)["Dropout"] == 1


def test_remove_no_ops_at_graph_boundaries():
    # Identity from a graph input straight to a graph output must stay (ONNX names both);
    # a no-op whose output is a graph output hands its name to the input's producer.
    model = parse(f"""{HEADER}
    g (float[2,3] x) => (float[2,3] a, float[2,3] b) {{
        a = Identity(x)
        r = Relu(x)
        b = Identity(r)
    }}""")
    after, result = run_passes(model, "remove-no-ops")
    assert ops(after) == {"Identity": 1, "Relu": 1}
    assert [o.name for o in after.graph.output] == ["a", "b"]
    assert result.table[0].rewrites == 1
    assert_same_outputs(model, after, atol=0)


# ---------------------------------------------------------------------------- collapse-chains
CHAINS = {
    # (body, output type, input type, op counts after)
    "Transpose pair cancelling": ("""a = Transpose <perm = [1, 0, 2]> (x)
        t = Transpose <perm = [1, 0, 2]> (a)""", "float[2,3,4]", "float[2,3,4]", {"Relu": 1}),
    "Transpose pair composing": ("""a = Transpose <perm = [1, 0, 2]> (x)
        t = Transpose <perm = [0, 2, 1]> (a)""", "float[3,4,2]", "float[2,3,4]", {"Transpose": 1, "Relu": 1}),
    "Flatten -> Unsqueeze -> Reshape": ("""a = Flatten <axis = 1> (x)
        ax = Constant <value = int64[1] {0}> ()
        b = Unsqueeze(a, ax)
        s = Constant <value = int64[2] {4, 6}> ()
        t = Reshape(b, s)""", "float[4,6]", "float[2,3,4]", {"Reshape": 1, "Relu": 1}),
    "Squeeze -> Unsqueeze with a dynamic dim": ("""ax = Constant <value = int64[1] {1}> ()
        a = Squeeze(x, ax)
        t = Unsqueeze(a, ax)""", "float[N,1,4]", "float[N,1,4]", {"Relu": 1}),
    "Cast float -> double -> float": ("""a = Cast <to = 11> (x)
        t = Cast <to = 1> (a)""", "float[2,3,4]", "float[2,3,4]", {"Relu": 1}),
    "Cast int32 -> int64 -> float": ("""a = Cast <to = 7> (x)
        t = Cast <to = 1> (a)""", "float[2,3,4]", "int32[2,3,4]", {"Cast": 1, "Relu": 1}),
}


@pytest.mark.parametrize("case", list(CHAINS))
def test_collapse_chains(case):
    body, out_type, in_type, expected = CHAINS[case]
    model = unary_model(body, out_type=out_type, in_type=in_type)
    # fold-shapes infers the intermediate shapes the Reshape-chain rule needs
    after, result = run_passes(model, "fold-shapes", "collapse-chains", "remove-dead-nodes", "lift-constants")
    assert {op: n for op, n in ops(after).items()} == expected
    assert_same_outputs(model, after, shapes={"N": 3}, atol=0)


def test_collapse_chains_keeps_lossy_casts_and_shared_intermediates():
    model = parse(f"""{HEADER}
    g (float[2,3] x) => (float[2,3] y, float[3,2] z, float[2,3] w) {{
        h = Cast <to = 10> (x)
        y = Cast <to = 1> (h)
        t = Transpose <perm = [1, 0]> (x)
        u = Transpose <perm = [1, 0]> (t)
        z = Relu(t)
        w = Neg(u)
    }}""")
    after, result = run_passes(model, "collapse-chains")
    # float -> float16 -> float rounds; the Transpose pair's middle value has another use
    assert ops(after) == {"Cast": 2, "Transpose": 2, "Relu": 1, "Neg": 1}
    assert result.table[0].rewrites == 0
    assert_same_outputs(model, after, atol=0)


# ------------------------------------------------------------------- folding, lifting, shapes
def test_fold_constants_and_its_refusal():
    model = parse(f"""{HEADER}
    g (float[2,3] x) => (float[2,3] y) <float[3] w = {{1, 2, 3}}> {{
        two = Constant <value = float {{2}}> ()
        w2 = Mul(w, two)
        w3 = Add(w2, w)
        y = Add(x, w3)
    }}""")
    after, result = run_passes(model, "fold-constants", "remove-dead-nodes")
    assert ops(after) == {"Add": 1}  # the one that reads the input x
    assert result.table[0].rewrites == 2
    assert_same_outputs(model, after, atol=0)


def test_fold_large_constants_goes_past_the_size_limit():
    weight = onnx.numpy_helper.from_array(np.random.default_rng(0).standard_normal((100, 100)).astype(np.float32), "w")
    model = parse(f"""{HEADER}
    g (float[100,100] x) => (float[100,100] y) {{
        two = Constant <value = float {{2}}> ()
        w2 = Mul(w, two)
        y = Add(x, w2)
    }}""", [weight])
    after, _ = run_passes(model, "fold-constants", "remove-dead-nodes")
    assert ops(after)["Mul"] == 1  # 10,000 elements: over the default limit
    after, _ = run_passes(model, "fold-large-constants", "remove-dead-nodes")
    assert ops(after) == {"Add": 1}
    assert_same_outputs(model, after, atol=0)


def test_weights_computed_from_constants_fold_whatever_their_size():
    """A float16 weight cast to float32 and a ConstantOfShape weight (onnx's "light" models,
    whose weights are also listed as graph inputs, as before ONNX IR version 4) fold at the
    default level: computed at run time they would cost every inference."""
    w16 = onnx.numpy_helper.from_array(np.random.default_rng(0).standard_normal((300, 300)).astype(np.float16), "w16")
    shape = onnx.numpy_helper.from_array(np.array([300, 300], np.int64), "shape")
    model = parse(f"""{HEADER}
    g (float[2,300] x, int64[2] shape) => (float[2,300] y) {{
        w = Cast <to = 1> (w16)
        a = MatMul(x, w)
        k = ConstantOfShape <value = float[1] {{0.01}}> (shape)
        y = MatMul(a, k)
    }}""", [w16, shape])
    after, _ = run_passes(model, "fold-constants", "remove-dead-nodes")
    assert ops(after) == {"MatMul": 2}
    assert [i.name for i in after.graph.input] == ["x"]
    feeds = {"x": np.random.default_rng(1).standard_normal((2, 300)).astype(np.float32)}
    np.testing.assert_allclose(ort_run(after, feeds)["y"], ort_run(model, feeds)["y"], rtol=1e-5, atol=1e-6)


SHAPE_MODEL = f"""{HEADER}
    g (float[N,3,4] x) => (float[N,12] y, int64 n) {{
        s = Shape(x)
        i = Constant <value = int64 {{0}}> ()
        b = Gather <axis = 0> (s, i)
        ax = Constant <value = int64[1] {{0}}> ()
        bu = Unsqueeze(b, ax)
        twelve = Constant <value = int64[1] {{12}}> ()
        target = Concat <axis = 0> (bu, twelve)
        y = Reshape(x, target)
        n = Size(x)
    }}"""


def test_fold_shapes_under_fixed_input_shapes():
    model = parse(SHAPE_MODEL)
    after, result = run_passes(model, "fold-shapes", "fold-constants", "remove-dead-nodes", "lift-constants",
                               input_shapes={"x": [2, 3, 4]})
    # n = Size(x) is a graph output: it stays a Constant node (an initializer cannot be one)
    assert ops(after) == {"Reshape": 1, "Constant": 1}
    assert result.table[0].rewrites >= 2  # Shape and Size
    assert_same_outputs(parse(SHAPE_MODEL.replace("N,", "2,")), after, atol=0)


def test_fold_shapes_with_a_dynamic_dim():
    # Without a fixed batch, Shape and Size of x stay; the Reshape target still becomes a
    # constant ([-1, 12]) because the output shape [N, 12] has one unknown dim.
    model = parse(SHAPE_MODEL)
    after, _ = run_passes(model, "fold-shapes", "remove-dead-nodes", "lift-constants")
    assert ops(after) == {"Reshape": 1, "Size": 1}
    assert_same_outputs(model, after, shapes={"N": 5}, atol=0)


def test_lift_constants():
    model = unary_model("""c = Constant <value = float[4] {1, 2, 3, 4}> ()
        t = Add(x, c)""")
    after, result = run_passes(model, "lift-constants")
    assert ops(after) == {"Add": 1, "Relu": 1}
    assert len(after.graph.initializer) == 1
    assert result.table[0].rewrites == 1


# --------------------------------------------------------------- dead code, CSE, dedup
def test_remove_dead_nodes():
    model = parse(f"""{HEADER}
    g (float[2,3] x) => (float[2,3] y) <float[3] unused = {{1, 2, 3}}, float[3] w = {{1, 1, 2}}> {{
        dead = Exp(x)
        dead2 = Add(dead, unused)
        y = Add(x, w)
    }}""")
    after, result = run_passes(model, "remove-dead-nodes")
    assert ops(after) == {"Add": 1}
    assert [i.name for i in after.graph.initializer] == ["w"]
    assert result.table[0].rewrites == 3
    assert_same_outputs(model, after, atol=0)


def test_cse_merges_equal_nodes_but_not_random_ones():
    model = parse(f"""{HEADER}
    g (float[2,3] x) => (float[2,3] y, float[2,3] z) {{
        a = Relu(x)
        b = Relu(x)
        y = Add(a, b)
        r1 = RandomNormalLike(x)
        r2 = RandomNormalLike(x)
        z = Sub(r1, r2)
    }}""")
    after, result = run_passes(model, "cse", verify_each=False)
    assert ops(after) == {"Relu": 1, "Add": 1, "RandomNormalLike": 2, "Sub": 1}
    assert result.table[0].rewrites == 1


def test_dedup_initializers():
    model = parse(f"""{HEADER}
    g (float[2,3] x) => (float[2,3] y) <float[3] a = {{1, 2, 3}}, float[3] b = {{1, 2, 3}}, float[3] c = {{1, 2, 4}}> {{
        p = Add(x, a)
        q = Mul(p, b)
        y = Sub(q, c)
    }}""")
    after, result = run_passes(model, "dedup-initializers")
    assert sorted(i.name for i in after.graph.initializer) == ["a", "c"]
    assert result.table[0].rewrites == 1
    assert_same_outputs(model, after, atol=0)


def test_passes_reach_into_subgraphs():
    model = parse(f"""{HEADER}
    g (bool cond, float[2,3] x) => (float[2,3] y, float[2,3] z) {{
        y = If (cond) <then_branch = g1 () => (float[2,3] a) {{
                s = Shape(x)
                r = Reshape(x, s)
                a = Relu(r)
            }}, else_branch = g2 () => (float[2,3] b) {{
                t1 = Transpose <perm = [1, 0]> (x)
                t2 = Transpose <perm = [1, 0]> (t1)
                b = Neg(t2)
            }}>
        n = Constant <value = int64 {{3}}> ()
        c = Constant <value = bool {{1}}> ()
        z = Loop (n, c, x) <body = body (int64 i, bool cin, float[2,3] acc) => (bool cout, float[2,3] acc2) {{
            zero = Constant <value = float {{0}}> ()
            cout = Identity(cin)
            p = Add(acc, zero)
            acc2 = Add(p, x)
        }}>
    }}""")
    after, _ = run_passes(model, *SIMPLIFICATION)
    branches = {a.name: a.g for a in next(n for n in after.graph.node if n.op_type == "If").attribute}
    assert ops(branches["then_branch"]) == {"Relu": 1}  # Shape folded, Reshape to itself removed
    assert ops(branches["else_branch"]) == {"Neg": 1}  # Transpose pair cancelled
    body = next(n for n in after.graph.node if n.op_type == "Loop").attribute[0].g
    # Add of 0 removed and its now unused initializer with it; cin -> cout must stay an Identity
    assert ops(body) == {"Identity": 1, "Add": 1} and not body.initializer
    for cond in (True, False):
        feeds = {"cond": np.array(cond), "x": np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32)}
        expected, got = ort_run(model, feeds), ort_run(after, feeds)
        for name in expected:
            np.testing.assert_array_equal(got[name], expected[name])
