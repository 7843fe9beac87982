"""Scaled dot-product attention -> one ONNX ``Attention`` op (opset 23).

The block torch exports for a BERT/ViT self-attention layer, with q, k, v the projections
[B, S, H*D]::

    q4 = Transpose(Reshape(q, [B, S, H, D]), perm=[0, 2, 1, 3])          # [B, H, S, D]
    kT = Transpose(Reshape(k, [B, S, H, D]), perm=[0, 2, 3, 1])          # [B, H, D, S]
    v4 = Transpose(Reshape(v, [B, S, H, D]), perm=[0, 2, 1, 3])
    p  = Softmax(MatMul(q4, kT) / c  (or * c, or unscaled, or q4 * a, kT * b)  [+ mask], axis=-1)
    y  = Reshape(Transpose(MatMul(p, v4), perm=[0, 2, 1, 3]), [B, S, H*D])

becomes ``Attention(q, k, v, mask, q_num_heads=H, kv_num_heads=H, scale=1/c)`` on the 3-D
projections: the head split and merge disappear with it. A bare core on 4-D [B, H, S, D]
tensors (K^T as Transpose(k, [0, 1, 3, 2])) becomes a 4-D ``Attention``.

The model's opset is raised to 23 when its other nodes keep their meaning (see ``opset.py``),
else the rule refuses. onnxruntime 1.32 runs Attention-23 on CPU, but requires the mask's
second-to-last dim to be the query length (the ONNX spec only asks for broadcastability), so a
[B, 1, 1, S] padding mask is Expanded to [B, 1, S_q, S] in front of the op.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter._basics import MatchResult
from onnxscript.rewriter._rewrite_rule import RewriteRuleClassBase

from lepton_opt.passes.fusion.common import FusionPass, float_tensor, opset_allows, rank, scalar

# "pre": Q and K^T each multiplied by sqrt(scale) before the MatMul (torch's export of
# F.scaled_dot_product_attention); the scale is the product of the two constants.
SCALINGS = ("div", "mul", "pre", "none")
MASKS = ("none", "add", "add-swapped")


def _probs(op, q4, kt, scale, scale_k, mask, scaling, masking, guarded, zero):
    """The attention probabilities; ``guarded``: torch's SDPA export (transformers' default
    attention) zeroes the NaN rows a fully masked query leaves: Where(IsNaN(p), 0, p)."""
    probs = _scores(op, q4, kt, scale, scale_k, mask, scaling, masking)
    return op.Where(op.IsNaN(probs), zero, probs) if guarded else probs


def _scores(op, q4, kt, scale, scale_k, mask, scaling, masking):
    if scaling == "pre":
        q4, kt = op.Mul(q4, scale), op.Mul(kt, scale_k)
    s = op.MatMul(q4, kt)
    if scaling == "div":
        s = op.Div(s, scale)
    elif scaling == "mul":
        s = op.Mul(s, scale)
    if masking == "add":
        s = op.Add(s, mask)
    elif masking == "add-swapped":
        s = op.Add(mask, s)
    return op.Softmax(s, _allow_other_attributes=True, _outputs=["probs"])


def _scale_value(scaling: str, scale: ir.Value | None, scale_k: ir.Value | None = None) -> float | None:
    if scaling == "none":
        return 1.0
    if scaling == "pre":
        c, c_k = scalar(scale), scalar(scale_k)
        return None if c is None or c_k is None or c * c_k == 0 else c * c_k
    c = scalar(scale)
    if c is None or c == 0:
        return None
    return 1.0 / c if scaling == "div" else c


def _same(a, b) -> bool:
    return isinstance(a, int) and isinstance(b, int) and a == b or (not isinstance(a, int) and a == b)


class _AttentionBase(RewriteRuleClassBase):
    def __init__(self, kind: str, scaling: str, masking: str, guarded: bool = False):
        super().__init__(f"Attention[{kind}, scale {scaling}, mask {masking}{', NaN guard' if guarded else ''}]")
        self.scaling, self.masking, self.guarded = scaling, masking, guarded

    def _guard(self, op, out):
        """The NaN guard moved behind the op: a fully masked query row is NaN in every output
        element there (its probabilities were), and 0 after the guard either way."""
        if not self.guarded:
            return out
        zero = op.Constant(value=ir.tensor(np.array(0, dtype=ir.DataType(out.dtype).numpy())
                                           if out.dtype is not None else np.array(0, np.float32)))
        return op.Where(op.IsNaN(out), zero, out)

    def _check_core(self, result, context, probs, scale, scale_k, mask, q, key_len, zero=None) -> bool:
        if self.guarded and (scalar(zero) is None or scalar(zero) != 0.0):
            result.fail("the NaN guard does not replace NaN with 0")
            return False
        softmax = probs.producer()
        axis = softmax.attributes.get_int("axis", -1)
        if axis not in (-1, rank(probs) - 1 if rank(probs) else -1):
            result.fail("Softmax is not over the last axis")
            return False
        if _scale_value(self.scaling, scale, scale_k) is None:
            result.fail("the score scale is not a non-zero constant scalar")
            return False
        if not float_tensor(result, q, "the query"):
            return False
        if mask is not None:
            if mask.shape is None or rank(mask) > 4 or mask.dtype != q.dtype:
                result.fail("the additive mask has an unknown shape, rank above 4 or another dtype")
                return False
            # Attention takes the mask over the full key length; a mask broadcast along the
            # keys (last dim 1) or of another length is not something it can express.
            if not _same(mask.shape[-1], key_len):
                result.fail("the additive mask's last dim is not the key length")
                return False
        return opset_allows(result, context, "Attention")

    def _mask_for_ort(self, op, mask, query_len, query, query_axis):
        """Expand a mask whose query axis is 1 to the query length (onnxruntime requires it)."""
        if mask is None:
            return None
        dims = list(mask.shape)
        r = max(len(dims), 2)
        dims = [1] * (r - len(dims)) + dims
        if not (isinstance(dims[-2], int) and dims[-2] == 1) or (isinstance(query_len, int) and query_len == 1):
            return mask
        if isinstance(query_len, int):
            target = op.Constant(value=ir.tensor(np.array([1] * (r - 2) + [query_len, 1], np.int64)))
        else:
            length = op.Shape(query, start=query_axis, end=query_axis + 1)
            target = op.Concat(op.Constant(value=ir.tensor(np.ones(r - 2, np.int64))), length,
                               op.Constant(value=ir.tensor(np.ones(1, np.int64))), axis=0)
        return op.Expand(mask, target)


class AttentionBlock(_AttentionBase):
    """Head split, scaled masked softmax(Q K^T) V, head merge -> Attention on [B, S, H*D]"""

    def __init__(self, scaling: str, masking: str, guarded: bool = False):
        super().__init__("block", scaling, masking, guarded)

    def pattern(self, op, q, k, v, q_shape, k_shape, v_shape, scale, scale_k, mask, out_shape, zero):
        def heads(t, shape, name, perm):
            return op.Transpose(op.Reshape(t, shape, _allow_other_attributes=True, _outputs=[name]), perm=perm)

        probs = _probs(op, heads(q, q_shape, "q4", [0, 2, 1, 3]), heads(k, k_shape, "k4", [0, 2, 3, 1]),
                       scale, scale_k, mask, self.scaling, self.masking, self.guarded, zero)
        context = op.MatMul(probs, heads(v, v_shape, "v4", [0, 2, 1, 3]))
        return op.Reshape(op.Transpose(context, perm=[0, 2, 1, 3]), out_shape, _allow_other_attributes=True,
                          _outputs=["out"])

    def check(self, context, q, k, v, q4, k4, v4, probs, out, scale=None, scale_k=None, mask=None, zero=None,
              **_) -> MatchResult:
        result = MatchResult()
        heads = []
        for t, t4, what in ((q, q4, "query"), (k, k4, "key"), (v, v4, "value")):
            if rank(t) != 3 or rank(t4) != 4:
                return result.fail(f"the {what} is not a 3-D projection split into 4-D heads (shapes unknown?)")
            b, s, hidden = t.shape
            b4, s4, h, d = t4.shape
            if not (isinstance(h, int) and isinstance(d, int) and isinstance(hidden, int) and h * d == hidden
                    and _same(b, b4) and _same(s, s4)):
                return result.fail(f"the {what} Reshape is not [B, S, H*D] -> [B, S, H, D]")
            heads.append((h, d))
        (hq, dq), (hk, dk), (hv, _) = heads
        if not (hq == hk == hv and dq == dk):
            return result.fail("query, key and value differ in head count or Q/K head size")
        if rank(out) != 3 or not (isinstance(out.shape[2], int) and out.shape[2] == hv * heads[2][1]):
            return result.fail("the head merge is not [B, S, H, D] -> [B, S, H*D]")
        self._check_core(result, context, probs, scale, scale_k, mask, q, k.shape[1], zero)
        return result

    def rewrite(self, op, q, k, v, q4, scale=None, scale_k=None, mask=None, **_):
        heads = q4.shape[2]
        mask = self._mask_for_ort(op, mask, q.shape[1], q, 1)
        inputs = [q, k, v] + ([mask] if mask is not None else [])
        return self._guard(op, op.Attention(*inputs, q_num_heads=heads, kv_num_heads=heads,
                                            scale=_scale_value(self.scaling, scale, scale_k)))


class AttentionCore(_AttentionBase):
    """softmax(Q K^T * c [+ mask]) V on 4-D [B, H, S, D] tensors -> Attention"""

    def __init__(self, scaling: str, masking: str, guarded: bool = False):
        super().__init__("core", scaling, masking, guarded)

    def pattern(self, op, q, k, v, scale, scale_k, mask, zero):
        probs = _probs(op, q, op.Transpose(k, perm=[0, 1, 3, 2]), scale, scale_k, mask, self.scaling,
                       self.masking, self.guarded, zero)
        return op.MatMul(probs, v)

    def check(self, context, q, k, v, probs, scale=None, scale_k=None, mask=None, zero=None,
              **_) -> MatchResult:
        result = MatchResult()
        if not (rank(q) == rank(k) == rank(v) == 4):
            return result.fail("Q, K, V are not 4-D [B, H, S, D] (or their shapes are unknown)")
        if not (_same(q.shape[1], k.shape[1]) and _same(k.shape[1], v.shape[1])):
            return result.fail("Q, K, V differ in head count")
        self._check_core(result, context, probs, scale, scale_k, mask, q, k.shape[2], zero)
        return result

    def rewrite(self, op, q, k, v, scale=None, scale_k=None, mask=None, **_):
        mask = self._mask_for_ort(op, mask, q.shape[2], q, 2)
        inputs = [q, k, v] + ([mask] if mask is not None else [])
        return self._guard(op, op.Attention(*inputs, scale=_scale_value(self.scaling, scale, scale_k)))


class FuseAttention(FusionPass):
    name = "fuse-attention"
    description = "scaled dot-product attention (with its head split/merge) -> Attention (opset 23)"
    needs_shapes = True
    constants_second = True
    # The whole block first: the core rule fires at MatMul(p, V), which comes before the merge.
    stages = (
        [AttentionBlock.rule(s, m, g) for s in SCALINGS for m in MASKS for g in (False, True)],
        [AttentionCore.rule(s, m, g) for s in SCALINGS for m in MASKS for g in (False, True)],
    )
