"""Per-channel Mul / Add after a Conv folded into its weights and bias; Pad folded into Conv.

* Conv(x, W, b) * s = Conv(x, W * s[c], b * s[c])  when s is constant and varies only along
  the channel axis (a scalar, [C], [C, 1, 1], [1, C, 1, 1]): torch exports a frozen affine /
  a LayerScale / a BN that was written out by hand this way.
* Conv(x, W, b) + t = Conv(x, W, b + t[c])  for the same per-channel constants.
* Conv(Pad(x, p), W) = Conv(x, W, pads += p)  for a constant zero Pad of spatial axes only
  (onnxscript's rule, made to refuse when the Pad output has another use).
* Conv taps that read only padding are dropped: with static spatial sizes, a kernel row or
  column whose taps fall outside the input at every output position multiplies zeros only.
  DeepLabV3's ASPP runs 3x3 convolutions dilated 24 and 36 on a 16x16 feature map: only the
  centre tap ever sees the input, so each is a 1x1 convolution at a ninth of the work. The
  weight is cropped to the taps that remain and the pads shrink by the dropped taps' reach.
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


def _live_taps(size: int, out: int, kernel: int, stride: int, dilation: int, pad: int) -> tuple[int, int]:
    """The first and last kernel tap (along one spatial axis) that reads the input at some
    output position, or (0, -1) when none does."""
    rows = np.arange(out)[:, None] * stride - pad + np.arange(kernel)[None, :] * dilation
    live = np.flatnonzero(((rows >= 0) & (rows < size)).any(axis=0))
    return (int(live[0]), int(live[-1])) if live.size else (0, -1)


class DropDeadConvTaps(RewriteRuleClassBase):
    """Conv(x, W[.., k]) -> Conv(x, W[.., lo:hi+1], pads shrunk) when taps outside lo..hi only
    ever read padding."""

    def pattern(self, op, x, w):
        return op.Conv(x, w, _allow_other_inputs=True, _outputs=["out"])

    def _plan(self, x, w, out):
        conv = out.producer()
        weight = constant(w)
        x_shape = x.shape
        out_shape = out.shape
        if weight is None or x_shape is None or out_shape is None or weight.ndim < 3:
            return None
        spatial = weight.ndim - 2
        sizes = [x_shape[2 + i] for i in range(spatial)]
        outs = [out_shape[2 + i] for i in range(spatial)]
        if not all(isinstance(d, int) and d > 0 for d in sizes + outs):
            return None
        attrs = conv.attributes
        if attrs.get_string("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
            return None
        kernel = list(weight.shape[2:])
        strides = list(attrs.get_ints("strides", [1] * spatial))
        dilations = list(attrs.get_ints("dilations", [1] * spatial))
        pads = list(attrs.get_ints("pads", [0] * 2 * spatial))
        keep, new_pads = [], list(pads)
        for i in range(spatial):
            lo, hi = _live_taps(sizes[i], outs[i], kernel[i], strides[i], dilations[i], pads[i])
            if hi < lo:
                return None  # nothing reads the input: leave such a degenerate conv alone
            begin = pads[i] - lo * dilations[i]
            end = (outs[i] - 1) * strides[i] + (hi - lo) * dilations[i] + 1 - sizes[i] - begin
            if begin < 0 or end < 0:
                return None  # the kept taps would need the input cropped
            keep.append((lo, hi))
            new_pads[i], new_pads[spatial + i] = begin, end
        if all(lo == 0 and hi == k - 1 for (lo, hi), k in zip(keep, kernel)):
            return None
        return weight, keep, new_pads, dilations

    def check(self, context, x, w, out) -> MatchResult:
        result = MatchResult()
        if self._plan(x, w, out) is None:
            return result.fail("every kernel tap reads the input (or shapes/weight unknown)")
        return result

    def rewrite(self, op, x, w, out):
        conv = out.producer()
        weight, keep, pads, dilations = self._plan(x, w, out)
        crop = (slice(None), slice(None)) + tuple(slice(lo, hi + 1) for lo, hi in keep)
        cropped = np.ascontiguousarray(weight[crop])
        attrs = {name: attr for name, attr in conv.attributes.items() if name not in ("pads", "kernel_shape", "dilations")}
        dil = [1 if hi == lo else d for (lo, hi), d in zip(keep, dilations)]
        inputs = [x, op.initializer(ir.tensor(cropped), fresh_name(conv.graph, f"{w.name}_live_taps")),
                  *conv.inputs[2:]]
        return op.Conv(*inputs, **attrs, pads=pads, dilations=dil, kernel_shape=list(cropped.shape[2:]))


class FuseConv(FusionPass):
    name = "fuse-conv"
    description = ("per-channel Mul/Add after Conv folded into weights and bias; zero Pad folded into Conv; "
                   "kernel taps that read only padding dropped")
    needs_shapes = True
    commute = True
    stages = ([FoldConvMul.rule(), FoldConvAdd.rule(), FoldPadIntoConv.rule(), DropDeadConvTaps.rule()],)

    def refusals(self, model: ir.Model) -> list[str]:
        # DropDeadConvTaps matches every Conv; one without dead taps is not a refusal to report.
        return [line for line in super().refusals(model) if not line.startswith("DropDeadConvTaps:")]
