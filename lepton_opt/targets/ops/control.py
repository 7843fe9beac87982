"""Control flow: ``If``.

A condition known at compile time (folded shape checks, as exporters emit for dynamic axes)
lowers only the taken branch, inline. A run-time condition lowers both branches inline and
selects each output with ``where``; this needs both branches to give outputs of the same shape
and dtype. (A Relax ``If`` cannot live in the dataflow block the lowering emits into, and the
reference importer's ``If`` also computes both branches eagerly.)

``Loop`` and ``Scan`` have no converter: the lowering rejects them as unsupported ops.
"""

from __future__ import annotations

import numpy as np
from tvm import relax
from tvm.sym import Analyzer

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
    then_out = _exprs(lowerer, then_branch, lowerer.lower_subgraph(then_branch))
    else_out = _exprs(lowerer, else_branch, lowerer.lower_subgraph(else_branch))
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


def _exprs(lowerer, graph, outputs: list) -> list[relax.Expr]:
    """Branch outputs as Relax expressions (a select needs both at run time)."""
    return [lowerer.expr(v, "branch output") if isinstance(o, Known) else o for v, o in zip(graph.outputs, outputs)]


def _fmt(shape) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ")"


CONVERTERS = {"If": If}
