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
        # takes the other branch, and says so.
        (bad,) = failed
        lowerer.warnings.append(
            f"If node {ctx.node.name or '?'!r}: its {bad} branch cannot be compiled for these input shapes "
            f"({str(branches[bad]).splitlines()[0][:200]}); the build always takes the "
            f"{'else' if bad == 'then' else 'then'} branch")
        return branches["else" if bad == "then" else "then"]
    then_out, else_out = branches["then"], branches["else"]
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
