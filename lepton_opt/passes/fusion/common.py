"""What every fusion pass shares: the pass wrapper around rule sets and the checks rules reuse.

A fusion family is a list of onnxscript rewrite rules (pattern, ``check`` returning a
``MatchResult`` whose ``reason`` says why it refused, rewrite). :class:`FusionPass` applies them:

* stage by stage (``stages``: a list of rule lists; a later stage sees what an earlier one made,
  e.g. whole-block attention before the bare core);
* after shape inference when a rule reads ranks or dims (``needs_shapes``);
* then raises the model's opset when a fused op needs a newer one (the rules' checks already
  refused when that raise is impossible, see :mod:`.opset`);
* and drops the initializers its rewrites left unused (the folded BatchNorm statistics, the
  replaced weights), so a pass run alone leaves no dead weights behind.

The rewriter itself refuses a match whose intermediate values have a use outside the match or
are graph outputs; rules that rewrite a weight also check :func:`exclusive_constant`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common as common_passes
from onnxscript.optimizer import basic_constant_propagation
from onnxscript.rewriter import RewriteRuleSet
from onnxscript.rewriter._basics import MatchingTracer, MatchResult, MatchStatus
from onnxscript.rewriter._rewrite_rule import RewriteRule

from lepton_opt.passes.base import Pass, PassResult
from lepton_opt.passes.fusion import opset as opset_module
from lepton_opt.passes.fusion.opset import fresh_initializer_name as fresh_name  # noqa: F401 - for the rules

FLOAT_TYPES = frozenset({ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.BFLOAT16, ir.DataType.DOUBLE})


class FusionPass(Pass):
    """Applies ``stages`` of rewrite rules once each; the PassManager repeats to a fixed point."""

    stages: ClassVar[Sequence[Sequence[RewriteRule]]] = ()
    needs_shapes: ClassVar[bool] = False
    commute: ClassVar[bool] = False  # also try Add/Mul patterns with their operands swapped
    # Put the constant operand of every Add/Mul second first, so that patterns need not spell
    # both operand orders for each constant (x * 0.5 and 0.5 * x). Meaning is unchanged.
    constants_second: ClassVar[bool] = False

    _rule_sets: ClassVar[list[RewriteRuleSet] | None] = None

    @classmethod
    def rule_sets(cls) -> list[RewriteRuleSet]:
        # Built once per class: commuted variants are many and their construction is not free.
        if cls.__dict__.get("_rule_sets") is None:
            cls._rule_sets = [RewriteRuleSet(list(stage), commute=cls.commute) for stage in cls.stages]
        return cls._rule_sets

    def call(self, model: ir.Model) -> PassResult:
        if self.needs_shapes:
            common_passes.ShapeInferencePass(check_type=False, strict_mode=False, data_prop=True)(model)
        if self.constants_second:
            put_constants_second(model)
        used_before = _constants_in_use(model)
        count = 0
        for rule_set in self.rule_sets():
            count += rule_set.apply_to_model(model)
        if count:
            opset_module.raise_for_new_ops(model)
            _drop_unused(model, used_before)
        return PassResult(model, count > 0, count)

    def refusals(self, model: ir.Model) -> list[str]:
        """Why the rules refused where a pattern matched, one line per refusal: ``rule: reason``.

        Rewrites nothing (it may still infer shapes and put constant operands second).
        """
        if self.needs_shapes:
            common_passes.ShapeInferencePass(check_type=False, strict_mode=False, data_prop=True)(model)
        if self.constants_second:
            put_constants_second(model)
        lines = []
        for rule_set in self.rule_sets():
            tracer = MatchingTracer()
            rule_set.apply_to_model(model, tracer=tracer)
            for rule, matches in tracer.best_matches_map.items():
                for info in matches:
                    reason = info.match_result.reason
                    if info.status == MatchStatus.CONDITION_FAILED or "other uses" in (reason or ""):
                        lines.append(f"{rule.name}: {reason}")
        return sorted(set(lines))


def put_constants_second(model: ir.Model) -> None:
    basic_constant_propagation(model.graph)
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        if (node.op_type in ("Add", "Mul") and node.domain in ("", "ai.onnx") and len(node.inputs) == 2
                and node.inputs[0] is not None and node.inputs[1] is not None
                and node.inputs[0].const_value is not None and node.inputs[1].const_value is None):
            first, second = node.inputs
            node.replace_input_with(0, second)
            node.replace_input_with(1, first)


def _constants_in_use(model: ir.Model) -> set[ir.Value]:
    """Initializers and Constant-node outputs that something reads."""
    used = {v for g in model.graphs() for v in g.initializers.values() if v.uses()}
    used.update(n.outputs[0] for n in ir.traversal.RecursiveGraphIterator(model.graph)
                if n.op_type == "Constant" and n.domain in ("", "ai.onnx") and n.outputs[0].uses())
    return used


def _drop_unused(model: ir.Model, used_before: set[ir.Value]) -> None:
    """Remove the constants this pass's rewrites stopped reading (nothing else)."""
    for value in used_before:
        if value.uses() or value.is_graph_input() or value.is_graph_output():
            continue
        node = value.producer()
        if node is not None and node.graph is not None:
            node.graph.remove(node, safe=True)
        elif node is None and value.graph is not None and value.name in value.graph.initializers:
            value.graph.initializers.pop(value.name)


# ------------------------------------------------------------------------------------ checks
def constant(value: ir.Value | None) -> np.ndarray | None:
    """The value's contents if it is a constant (initializer or folded Constant)."""
    if value is None or value.const_value is None:
        return None
    try:
        return value.const_value.numpy()
    except Exception:  # noqa: BLE001 - unreadable external data counts as unknown
        return None


def scalar(value: ir.Value | None) -> float | None:
    """A constant holding one number (any shape of size 1), as a float."""
    array = constant(value)
    if array is None or array.size != 1 or array.dtype.kind not in "fiu":
        return None
    return float(array.reshape(-1)[0])


def is_scalar(value: ir.Value | None, expected: float, rtol: float = 1e-4) -> bool:
    got = scalar(value)
    return got is not None and bool(np.isclose(got, expected, rtol=rtol, atol=0.0))


def exclusive_constant(result: MatchResult, context, value: ir.Value | None, what: str) -> bool:
    """``value`` is a constant that only the matched nodes read (so it may be rewritten).

    On refusal records the reason in ``result`` and returns False.
    """
    if value is None:
        return True
    if constant(value) is None:
        result.fail(f"{what} {value.name!r} is not a constant")
        return False
    if value.is_graph_input() or value.is_graph_output():
        result.fail(f"{what} {value.name!r} is a graph input or output")
        return False
    matched = set(context.nodes)
    for user, _ in value.uses():
        if user not in matched:
            result.fail(f"{what} {value.name!r} is shared with node {user.name!r} ({user.op_type})")
            return False
    return True


def opset_allows(result: MatchResult, context, op_type: str) -> bool:
    """The model's opset has ``op_type``, or can be raised to the opset that introduced it."""
    needed = opset_module.first_opset(op_type)
    current = opset_module.model_opset(context.model)
    if current >= needed:
        return True
    reason = opset_module.raise_refusal(context.model, needed)
    if reason is not None:
        result.fail(f"{op_type} needs opset {needed}; the model imports {current} and cannot be raised: {reason}")
        return False
    return True


def float_tensor(result: MatchResult, value: ir.Value, what: str) -> bool:
    if value.dtype not in FLOAT_TYPES:
        result.fail(f"{what} is not a floating-point tensor")
        return False
    return True


def rank(value: ir.Value | None) -> int | None:
    return None if value is None or value.shape is None else len(value.shape)
