"""Control flow: ``If`` and ``Loop``.

A condition known at compile time (folded shape checks, as exporters emit for dynamic axes)
lowers only the taken branch, inline. A run-time condition whose branches hold compute-heavy
ops (convolutions, matmuls, recurrences: ``torch.cond`` gating a block) runs only the branch
taken: each branch becomes a Relax function of its own (with its own dataflow block, so its
ops fuse as anywhere else) and a third function holds the Relax ``If`` that calls one of them;
the main function's dataflow block calls that one (a Relax ``If`` cannot live in a dataflow
block). Cheap branches, and models with dynamic dimensions, lower both branches inline and
select each output with ``where`` (what the reference importer does for every ``If``). Either
way both branches must give outputs of the same shape and dtype.

A ``Loop`` whose trip count is known at compile time (a constant ``M``, or a condition the
lowering can evaluate every iteration: tf2onnx's while loops over a fixed sequence length) is
unrolled: the body is lowered once per iteration with that iteration's counter, condition and
carried values, and the scan outputs are stacked. ``Scan`` has no converter.
"""

from __future__ import annotations

import numpy as np
from tvm import relax
from tvm import tirx as tir
from tvm.sym import Analyzer

from lepton_opt.errors import UnsupportedModelError
from lepton_opt.targets.lower import Known, LoweringError, dtype_of, shape_of

op = relax.op
_analyzer = Analyzer()


def If(ctx, cond, *, then_branch, else_branch):
    lowerer = ctx.lowerer
    known = ctx.known(0)
    if known is not None and not known.is_symbolic:
        taken = then_branch if bool(np.asarray(known.numeric()).reshape(-1)[0]) else else_branch
        return lowerer.lower_subgraph(taken)
    if dtype_of(cond) != "bool":
        cond = op.astype(cond, "bool")
    cond = ctx.emit(op.reshape(cond, []), lowerer.unique_name(f"{ctx.node.name or 'if'}_cond", "cond"))
    branching_failure = None
    if _worth_branching(lowerer, then_branch, else_branch):
        taken, branching_failure = _branching_if(ctx, cond, then_branch, else_branch)
        if taken is not None:
            return taken
    branches = {}
    for name, graph in (("then", then_branch), ("else", else_branch)):
        try:
            branches[name] = _exprs(lowerer, graph, lowerer.lower_subgraph(graph))
        except (UnsupportedModelError, LoweringError) as e:
            branches[name] = e
    failed = [name for name, out in branches.items() if isinstance(out, Exception)]
    if len(failed) == 2:
        raise branches["then"]
    if failed:
        # A branch that cannot be lowered for these input shapes is one onnxruntime could not
        # run with them either (silero VAD's 8 kHz branch on a 16 kHz chunk size): the build
        # takes the other branch, and says so. Not so a branch holding an op without a lowering
        # or with a data-dependent output shape (a detector's "no boxes left" check around its
        # NonMaxSuppression): that branch is real, and the If fails (to run in onnxruntime).
        (bad,) = failed
        blocking = _unlowerable_ops(lowerer, then_branch if bad == "then" else else_branch)
        if blocking:
            raise LoweringError(f"its {bad} branch holds {', '.join(sorted(blocking))}, which cannot be compiled "
                                f"({str(branches[bad]).splitlines()[0][:200]})")
        lowerer.warnings.append(
            f"If node {ctx.node.name or '?'!r}: its {bad} branch cannot be compiled for these input shapes "
            f"({str(branches[bad]).splitlines()[0][:200]}); the build always takes the "
            f"{'else' if bad == 'then' else 'then'} branch")
        return branches["else" if bad == "then" else "then"]
    then_out, else_out = branches["then"], branches["else"]
    if branching_failure:
        lowerer.warnings.append(f"If node {ctx.node.name or '?'!r}: {branching_failure}; both branches are "
                                "computed and one is selected")
    results = []
    for k, (a, b) in enumerate(zip(then_out, else_out)):
        if dtype_of(a) != dtype_of(b):
            raise LoweringError(f"output {k}: the branches give dtypes {dtype_of(a)} and {dtype_of(b)}")
        sa, sb = shape_of(a), shape_of(b)
        if len(sa) != len(sb) or not all(_analyzer.can_prove_equal(x, y) for x, y in zip(sa, sb)):
            raise LoweringError(
                f"output {k}: the branches give shapes {_fmt(sa)} and {_fmt(sb)}; an If with a run-time "
                "condition needs same-shaped branch outputs (fold the condition with static input shapes)")
        results.append(op.where(cond, a, b))
    return results


# Branches holding one of these run only when taken; others are cheap enough to compute both.
_BRANCH_WORTHY = ("Conv", "MatMul", "Gemm", "Attention", "LSTM", "GRU", "RNN", "Einsum", "Loop", "If")


# Below this many multiply-adds in each branch, computing both (and selecting) costs less than
# the branch functions' boundary, where each function's inputs and outputs change layout. Above
# it, the branch not taken may be the expensive one: it must not run.
_BRANCH_MIN_MACS = 10_000_000


def _worth_branching(lowerer, *graphs) -> bool:
    import onnx_ir as ir

    if lowerer._sym_vars:
        return False  # symbolic dims would have to be passed into the branch functions
    # The heavier branch decides: computing both runs it even when the other one is taken.
    costs = [sum(_macs(node) for node in ir.traversal.RecursiveGraphIterator(graph)) for graph in graphs]
    return max(costs) >= _BRANCH_MIN_MACS


def _macs(node) -> float:
    """Multiply-adds of a convolution or matmul from its declared shapes (infinite when they are
    not all known, or for an op whose cost is not counted here: such a branch counts as heavy)."""
    def dims(value):
        shape = value.shape if value is not None else None
        if shape is None or not all(isinstance(d, int) for d in shape):
            return None
        return list(shape)

    if node.op_type not in ("Conv", "ConvTranspose", "MatMul", "Gemm", "ConvInteger", "MatMulInteger",
                            "QLinearConv", "QLinearMatMul"):
        return float("inf") if any(word in node.op_type for word in _BRANCH_WORTHY) else 0.0
    out = dims(node.outputs[0])
    first = dims(node.inputs[0]) if node.inputs else None
    weight_index = 3 if node.op_type.startswith("QLinear") else 1
    weight = dims(node.inputs[weight_index]) if len(node.inputs) > weight_index else None
    if out is None or first is None or weight is None:
        return float("inf")
    elements = float(np.prod(out))
    if "Conv" in node.op_type:
        per_output = float(np.prod(weight[1:])) if node.op_type != "ConvTranspose" else \
            float(np.prod(weight[2:])) * weight[0] / max(1, out[1])
        return elements * per_output
    trans_a = node.attributes.get("transA")
    depth = first[-2] if trans_a is not None and trans_a.value else first[-1]
    return elements * depth


def _captured(lowerer, graphs) -> list:
    """Outer values the branches read that exist at run time (known values stay constants)."""
    import onnx_ir as ir

    defined, used = set(), []
    for graph in graphs:
        defined.update(graph.initializers.values())
        for node in ir.traversal.RecursiveGraphIterator(graph):
            defined.update(node.outputs)
            for attr in node.attributes.values():
                if attr.type == ir.AttributeType.GRAPH:
                    defined.update(attr.value.inputs)
                elif attr.type == ir.AttributeType.GRAPHS:
                    for g in attr.value:
                        defined.update(g.inputs)
            used.extend(v for v in node.inputs if v is not None)
        used.extend(graph.outputs)
    seen, captured = set(), []
    for value in used:
        if value not in defined and value not in seen and value in lowerer.exprs:
            seen.add(value)
            captured.append(value)
    return captured


def _branching_if(ctx, cond, then_branch, else_branch) -> tuple[list | None, str | None]:
    """Lower a run-time ``If`` to real control flow: (outputs, None), or (None, why not) when a
    branch does not lower as a function of its own (the caller's inline path then decides, and
    says why if it ends up computing both branches)."""
    lowerer = ctx.lowerer
    bb = lowerer.bb
    captured = _captured(lowerer, (then_branch, else_branch))
    outer = [lowerer.exprs[v] for v in captured]
    if not all(isinstance(e.ty, relax.TensorType) and e.ty.shape is not None
               and all(isinstance(d, tir.IntImm) for d in e.ty.shape.values) for e in outer):
        return None, None  # symbolic shapes: the inline path
    base = lowerer.unique_name(ctx.node.name or "if", "if")
    functions, types = [], []
    for name, graph in (("then", then_branch), ("else", else_branch)):
        saved_exprs, saved_warnings = dict(lowerer.exprs), list(lowerer.warnings)
        params = [relax.Var(lowerer.unique_name(v.name, "p"), e.ty) for v, e in zip(captured, outer)]
        error = None
        with bb.function(f"{base}_{name}", params=params, private=True):
            with bb.dataflow():
                for value, param in zip(captured, params):
                    lowerer.exprs[value] = param
                try:
                    outputs = _exprs(lowerer, graph, lowerer.lower_subgraph(graph))
                except Exception as e:  # noqa: BLE001 - handed to the inline path, which reports it
                    error, outputs = e, []
                result = bb.emit_output(relax.Tuple(outputs))
            gv = bb.emit_func_output(result)
        lowerer.exprs.clear()
        lowerer.exprs.update(saved_exprs)
        if error is not None:
            lowerer.warnings[:] = saved_warnings
            _forget(lowerer, graph)
            return None, (f"its {name} branch does not compile as a function of its own "
                          f"({str(error).splitlines()[0][:200] if str(error) else type(error).__name__})")
        functions.append(gv)
        types.append(bb.get()[gv].ret_ty)
    then_types, else_types = (t.fields for t in types)
    for a, b in zip(then_types, else_types):
        if a.dtype != b.dtype or len(a.shape.values) != len(b.shape.values) or not all(
                _analyzer.can_prove_equal(x, y) for x, y in zip(a.shape.values, b.shape.values)):
            return None, None  # the inline path names the mismatch
    cond_param = relax.Var("cond", relax.TensorType([], "bool"))
    params = [relax.Var(lowerer.unique_name(v.name, "p"), e.ty) for v, e in zip(captured, outer)]
    with bb.function(f"{base}_select", params=[cond_param, *params], private=True):
        chosen = bb.emit(relax.If(cond_param, relax.Call(functions[0], params), relax.Call(functions[1], params)))
        gv = bb.emit_func_output(chosen)
    result = ctx.emit(relax.Call(gv, [cond, *outer]), base)
    return [ctx.emit(relax.TupleGetItem(result, k)) for k in range(len(then_types))], None


def _unlowerable_ops(lowerer, graph) -> set[str]:
    """Op types in ``graph`` (nested graphs included) that have no converter or whose output
    shape depends on the data."""
    import onnx_ir as ir

    from lepton_opt.targets.lower import op_key

    return {op_key(node) for node in ir.traversal.RecursiveGraphIterator(graph)
            if op_key(node) not in lowerer.converters or node.op_type in DATA_DEPENDENT_OPS}


# Ops whose output shape depends on the input data.
DATA_DEPENDENT_OPS = frozenset({"NonZero", "NonMaxSuppression", "Unique", "Compress", "StringSplit"})


# Unrolling past this many iterations would make a program too large to build in reasonable time.
MAX_UNROLLED_ITERATIONS = 2048


def Loop(ctx, trip_count=None, cond=None, *initial, body):
    lowerer, node = ctx.lowerer, ctx.node
    trips = _known_scalar(ctx, 0, "trip count M") if trip_count is not None else None
    keep_going = True if cond is None else _known_scalar(ctx, 1, "initial condition")
    if trips is None and cond is None:
        raise LoweringError("a Loop with neither a trip count nor a condition never ends")
    carried = [ctx.known(2 + i) or value for i, value in enumerate(initial)]
    n_carried = len(carried)
    scans: list[list] = [[] for _ in body.outputs[1 + n_carried:]]
    iteration = 0
    while bool(keep_going) and (trips is None or iteration < trips):
        if iteration >= MAX_UNROLLED_ITERATIONS:
            raise LoweringError(f"the Loop runs more than {MAX_UNROLLED_ITERATIONS} iterations; "
                                "only loops up to that length are unrolled")
        _forget(lowerer, body)
        bound = [Known(np.array(iteration, np.int64), "int64"), Known(np.array(bool(keep_going)), "bool"), *carried]
        for value, given in zip(body.inputs, bound):
            if isinstance(given, Known):
                lowerer.known[value] = given
            else:
                lowerer.exprs[value] = given
        outputs = lowerer.lower_subgraph(body)
        if not isinstance(outputs[0], Known) or outputs[0].is_symbolic:
            raise LoweringError("the Loop's condition is computed at run time; only loops whose "
                                "iterations are known at compile time are unrolled (fix the input shapes)")
        keep_going = bool(np.asarray(outputs[0].numeric()).reshape(-1)[0])
        carried = outputs[1:1 + n_carried]
        for k, value in enumerate(outputs[1 + n_carried:]):
            scans[k].append(value)
        iteration += 1
    results = list(carried)
    for k, values in enumerate(scans):
        if not values:
            raise LoweringError(f"scan output {k} of the Loop is empty (zero iterations); its shape is unknown")
        exprs = [lowerer.expr(body.outputs[1 + n_carried + k], "loop scan output") if isinstance(v, Known) else v
                 for v in values]
        results.append(op.concat([ctx.emit(op.expand_dims(e, [0])) for e in exprs], axis=0))
    return results


def _known_scalar(ctx, index: int, what: str):
    known = ctx.known(index)
    if known is None or known.is_symbolic:
        raise LoweringError(f"the Loop's {what} is computed at run time; only loops whose iterations are "
                            "known at compile time are unrolled (fix the input shapes)")
    return np.asarray(known.numeric()).reshape(-1)[0].item()


def _forget(lowerer, graph) -> None:
    """Drop what the lowering knows of the values ``graph`` defines (its inputs, its nodes' outputs,
    nested graphs included), so that the next iteration lowers the body afresh."""
    import onnx_ir as ir

    values = list(graph.inputs)
    for node in ir.traversal.RecursiveGraphIterator(graph):
        values.extend(node.outputs)
    for value in values:
        lowerer.exprs.pop(value, None)
        lowerer.known.pop(value, None)


def _exprs(lowerer, graph, outputs: list) -> list[relax.Expr]:
    """Branch outputs as Relax expressions (a select needs both at run time)."""
    return [lowerer.expr(v, "branch output") if isinstance(o, Known) else o for v, o in zip(graph.outputs, outputs)]


def _fmt(shape) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ")"


CONVERTERS = {"If": If, "Loop": Loop}
