"""Per-channel Mul / Add after a Conv folded into its weights and bias; Pad folded into Conv.

* Conv(x, W, b) * s = Conv(x, W * s[c], b * s[c])  when s is constant and varies only along
  the channel axis (a scalar, [C], [C, 1, 1], [1, C, 1, 1]): torch exports a frozen affine /
  a LayerScale / a BN that was written out by hand this way.
* Conv(x, W, b) + t = Conv(x, W, b + t[c])  for the same per-channel constants.
* Conv(Pad(x, p), W) = Conv(x, W, pads += p)  for a constant zero Pad of spatial axes only
  (onnxscript's rule, made to refuse when the Pad output has another use).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter._basics import MatchResult
from onnxscript.rewriter._rewrite_rule import RewriteRuleClassBase
from onnxscript.rewriter.rules.common._fuse_pad_into_conv import FuseConvPad

from lepton_opt.passes.fusion.common import FusionPass, constant, exclusive_constant, float_tensor, fresh_name, rank


def _per_channel(value: ir.Value, out_rank: int, channels) -> np.ndarray | None:
    """The constant as a [C] (or [1]) vector when it broadcasts along the channel axis only."""
    array = constant(value)
    if array is None or array.ndim > out_rank:
        return None
    dims = [1] * (out_rank - array.ndim) + list(array.shape)
    if any(d != 1 for i, d in enumerate(dims) if i != 1):
        return None
    if dims[1] != 1 and not (isinstance(channels, int) and dims[1] == channels):
        return None
    return array.reshape(-1)


class _ConvAffine(RewriteRuleClassBase):
    rewrites_weight = True

    def check(self, context, x, c, conv_out) -> MatchResult:
        result = MatchResult()
        conv = conv_out.producer()
        w = conv.inputs[1]
        b = conv.inputs[2] if len(conv.inputs) > 2 else None
        out_rank = rank(conv_out)
        weight = constant(w)
        if out_rank is None or weight is None:
            return result.fail("Conv output rank or weight unknown")
        if _per_channel(c, out_rank, weight.shape[0]) is None:
            return result.fail(f"{c.name!r} is not a constant that varies along the channel axis only")
        if not float_tensor(result, conv_out, "Conv output"):
            return result
        if c.dtype != conv_out.dtype:
            return result.fail("the constant's dtype differs from the Conv output's")
        if self.rewrites_weight and not exclusive_constant(result, context, w, "Conv weight"):
            return result
        exclusive_constant(result, context, b, "Conv bias")
        return result

    def _new_conv(self, op, x, conv, weight, bias):
        graph = conv.graph
        w = conv.inputs[1]
        inputs = [x, op.initializer(ir.tensor(weight), fresh_name(graph, f"{w.name}_fused"))]
        if bias is not None:
            inputs.append(op.initializer(ir.tensor(bias), fresh_name(graph, f"{w.name}_fused_bias")))
        return op.Conv(*inputs, **conv.attributes)


class FoldConvMul(_ConvAffine):
    """Conv(x, W, b) * s -> Conv(x, W * s[c], b * s[c])"""

    def pattern(self, op, x, c):
        return op.Mul(op.Conv(x, _allow_other_inputs=True, _outputs=["conv_out"]), c)

    def rewrite(self, op, x, c, conv_out):
        conv = conv_out.producer()
        weight = constant(conv.inputs[1])
        s = _per_channel(c, len(conv_out.shape), weight.shape[0])
        s_w = np.broadcast_to(s, (weight.shape[0],)).reshape([-1] + [1] * (weight.ndim - 1))
        bias = constant(conv.inputs[2]) if len(conv.inputs) > 2 and conv.inputs[2] is not None else None
        new_bias = None if bias is None else (bias * np.broadcast_to(s, bias.shape)).astype(bias.dtype)
        return self._new_conv(op, x, conv, (weight * s_w).astype(weight.dtype), new_bias)


class FoldConvAdd(_ConvAffine):
    """Conv(x, W, b) + t -> Conv(x, W, b + t[c])"""

    rewrites_weight = False

    def pattern(self, op, x, c):
        return op.Add(op.Conv(x, _allow_other_inputs=True, _outputs=["conv_out"]), c)

    def rewrite(self, op, x, c, conv_out):
        conv = conv_out.producer()
        weight = constant(conv.inputs[1])
        channels = weight.shape[0]
        t = np.broadcast_to(_per_channel(c, len(conv_out.shape), channels), (channels,))
        bias = constant(conv.inputs[2]) if len(conv.inputs) > 2 and conv.inputs[2] is not None else None
        new_bias = (t if bias is None else bias + t).astype(weight.dtype)
        # The weight is unchanged: keep reading the same initializer.
        graph = conv.graph
        b = op.initializer(ir.tensor(new_bias), fresh_name(graph, f"{conv.inputs[1].name}_fused_bias"))
        return op.Conv(x, conv.inputs[1], b, **conv.attributes)


class FoldPadIntoConv(FuseConvPad):
    """Conv(Pad(x, p, 0), W) -> Conv(x, W, pads = pads + p)  (spatial, constant-zero pads only)"""

    def __init__(self):
        # onnxscript builds this rule with remove_nodes=False, which skips the matcher's
        # "intermediate value used elsewhere" refusal; we want that refusal.
        RewriteRuleClassBase.__init__(self, remove_nodes=True)


class FuseConv(FusionPass):
    name = "fuse-conv"
    description = "per-channel Mul/Add after Conv folded into weights and bias; zero Pad folded into Conv"
    needs_shapes = True
    commute = True
    stages = ([FoldConvMul.rule(), FoldConvAdd.rule(), FoldPadIntoConv.rule()],)
