"""MatMul + Add -> Gemm on 2-D operands (onnxscript's rules, with a stricter check).

Add(MatMul(a, b), c) = Gemm(a, b, c) when a and b are 2-D and c broadcasts *into* the [M, N]
product (Gemm's C is unidirectionally broadcast; an Add could also broadcast the product up to
a larger c). A Transpose([1, 0]) on either MatMul operand becomes transA / transB.
"""

from __future__ import annotations

from onnxscript.rewriter._basics import MatchResult
from onnxscript.rewriter.rules.common._matmul_add_to_gemm import (
    MatMulAddToGemm,
    TransABMatMulAddToGemm,
    TransAMatMulAddToGemm,
    TransBMatMulAddToGemm,
)

from lepton_opt.passes.fusion.common import FusionPass, rank

GEMM_TYPES = {"FLOAT", "FLOAT16", "BFLOAT16", "DOUBLE", "INT32", "INT64", "UINT32", "UINT64"}


class _Checked:
    def check(self, context, input_a, input_b, input_c=None, **kwargs) -> MatchResult:
        result = super().check(context, input_a, input_b, **kwargs)
        if not result:
            return result
        if input_a.dtype is None or input_a.dtype.name not in GEMM_TYPES:
            return result.fail("Gemm does not take this element type")
        if input_c is None or input_c.shape is None:
            return result.fail("the added operand's shape is unknown")
        out = context.root.outputs[0]
        if rank(input_c) > 2 or rank(out) != 2:
            return result.fail("the Add broadcasts beyond the 2-D product")
        product = context.root.inputs[0] if context.root.inputs[1] is input_c else context.root.inputs[1]
        if product.shape is None:
            return result.fail("the MatMul output shape is unknown")
        dims = list(product.shape)
        for c, d in zip(reversed(list(input_c.shape)), reversed(dims)):
            if c != 1 and c != d:
                return result.fail("the added operand does not broadcast into the product")
        return result


class MatMulAdd(_Checked, MatMulAddToGemm):
    """Add(MatMul(a, b), c) -> Gemm(a, b, c)"""


class TransAMatMulAdd(_Checked, TransAMatMulAddToGemm):
    """Add(MatMul(Transpose(a), b), c) -> Gemm(a, b, c, transA=1)"""


class TransBMatMulAdd(_Checked, TransBMatMulAddToGemm):
    """Add(MatMul(a, Transpose(b)), c) -> Gemm(a, b, c, transB=1)"""


class TransABMatMulAdd(_Checked, TransABMatMulAddToGemm):
    """Add(MatMul(Transpose(a), Transpose(b)), c) -> Gemm(a, b, c, transA=1, transB=1)"""


class FuseGemm(FusionPass):
    name = "fuse-gemm"
    description = "MatMul + Add on 2-D operands -> Gemm"
    needs_shapes = True
    commute = True
    stages = ([TransABMatMulAdd.rule(), TransAMatMulAdd.rule(), TransBMatMulAdd.rule(), MatMulAdd.rule()],)
