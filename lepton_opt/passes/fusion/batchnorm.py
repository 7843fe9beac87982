"""BatchNormalization folded into the Conv, ConvTranspose, Gemm or MatMul that feeds it.

Inference BN is a per-channel affine map, y = (t - mean) * s + beta with s = gamma / sqrt(var + eps).
When t = x * W + b with a constant W, the map folds into the weights:
W' = W * s (along the output-channel axis), b' = (b - mean) * s + beta.

onnxscript's rules do Conv / ConvTranspose / Gemm (and refuse a weight shared with another
node); they are reused here with two more refusals: a BN with training outputs or
``training_mode``, and non-float data. MatMul (2-D, constant [K, C] weight: torch's Linear +
BatchNorm1d) is written here and becomes a Gemm carrying the folded bias.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter._basics import MatchResult
from onnxscript.rewriter._rewrite_rule import RewriteRuleClassBase
from onnxscript.rewriter.rules.common._fuse_batchnorm import (
    FuseBatchNormIntoConv,
    FuseBatchNormIntoConvTranspose,
    FuseBatchNormIntoGemm,
)

from lepton_opt.passes.fusion.common import (
    FusionPass,
    constant,
    exclusive_constant,
    float_tensor,
    fresh_name,
    rank,
)


def _inference_bn(result: MatchResult, bn: ir.Node) -> bool:
    if len(bn.outputs) != 1 or bn.attributes.get_int("training_mode", 0):
        result.fail(f"BatchNormalization {bn.name!r} computes training statistics")
        return False
    if any(constant(v) is None for v in bn.inputs[1:5]):
        result.fail(f"BatchNormalization {bn.name!r} has non-constant parameters")
        return False
    return True


class _InferenceOnly:
    """Mixin: the library check plus the refusals above."""

    def check(self, context, x, inbound_out, batchnorm_out) -> MatchResult:
        result = super().check(context, x, inbound_out, batchnorm_out)
        if not result:
            return result
        if not _inference_bn(result, batchnorm_out.producer()):
            return result
        float_tensor(result, inbound_out, "the folded op's output")
        return result


class FoldBatchNormIntoConv(_InferenceOnly, FuseBatchNormIntoConv):
    """BN(Conv(x, W, b)) -> Conv(x, W * s, (b - mean) * s + beta)"""


class FoldBatchNormIntoConvTranspose(_InferenceOnly, FuseBatchNormIntoConvTranspose):
    """BN(ConvTranspose(x, W, b)) -> ConvTranspose(x, W * s per output channel, (b - mean) * s + beta)"""


class FoldBatchNormIntoGemm(_InferenceOnly, FuseBatchNormIntoGemm):
    """BN(Gemm(a, B, C)) -> Gemm(a, B * s along N, (beta_gemm * C - mean) * s + beta)"""


class FoldBatchNormIntoMatMul(RewriteRuleClassBase):
    """BN(MatMul(x[M, K], W[K, C])) -> Gemm(x, W * s, (0 - mean) * s + beta)"""

    def pattern(self, op, x, w):
        return op.BatchNormalization(op.MatMul(x, w), _allow_other_inputs=True, _outputs=["bn_out"])

    def check(self, context, x, w, bn_out) -> MatchResult:
        result = MatchResult()
        bn = bn_out.producer()
        if rank(x) != 2:
            return result.fail("MatMul input is not 2-D (BN's channel axis 1 would not be the weight's columns)")
        weight = constant(w)
        if weight is None or weight.ndim != 2:
            return result.fail("MatMul weight is not a constant 2-D tensor")
        if not _inference_bn(result, bn) or not exclusive_constant(result, context, w, "MatMul weight"):
            return result
        float_tensor(result, x, "MatMul input")
        return result

    def rewrite(self, op, x, w, bn_out):
        bn = bn_out.producer()
        gamma, beta, mean, var = (constant(v).astype(np.float64) for v in bn.inputs[1:5])
        s = gamma / np.sqrt(var + bn.attributes.get_float("epsilon", 1e-5))
        weight = constant(w)
        graph = bn.graph
        dtype = weight.dtype
        new_w = op.initializer(ir.tensor((weight * s[None, :]).astype(dtype)), fresh_name(graph, f"{w.name}_bn"))
        new_b = op.initializer(ir.tensor((beta - mean * s).astype(dtype)), fresh_name(graph, f"{w.name}_bn_bias"))
        return op.Gemm(x, new_w, new_b)


class FoldBatchNorm(FusionPass):
    name = "fold-batchnorm"
    description = "BatchNormalization folded into a preceding Conv, ConvTranspose, Gemm or 2-D MatMul"
    needs_shapes = True
    stages = ([
        FoldBatchNormIntoConv.rule(),
        FoldBatchNormIntoConvTranspose.rule(),
        FoldBatchNormIntoGemm.rule(),
        FoldBatchNormIntoMatMul.rule(),
    ],)
