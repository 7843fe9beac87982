"""Converters for the ops the fusion passes produce that the other tables lack.

``Attention`` (opset 23) lowers to Relax's fused ``nn.attention`` (BSNH layout), not to its
pieces, so each backend sees one attention op and picks its kernel. (``Gelu``,
``LayerNormalization``, ``RMSNormalization``, ``HardSigmoid`` and ``HardSwish`` are in
``elementwise`` / ``nn``.)

On the CPU, TVM has no attention kernel: it legalizes ``nn.attention`` into one PrimFunc that
our default schedules cannot tile (a BERT-base layer's attention measured 48 ms, against 3.7 ms
for the same math as batch matmuls + softmax). :func:`expand_attention_pass` therefore lowers
the op, in the CPU pipeline only, to lepton-opt's fused attention kernel
(:mod:`lepton_opt.targets.attention`) where it applies, and otherwise expands it into permute /
matmul / softmax / matmul, which the register-tiled matmul and row-reduction schedules handle.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from lepton_opt.targets.lower import LoweringError, dtype_of, mutator_pass, shape_of
from lepton_opt.targets.ops.elementwise import scalar

op = relax.op


def _to_bsnh(ctx, t, heads: int | None, what: str):
    """[B, S, H*D] (3-D, ``heads`` given) or [B, H, S, D] -> [B, S, H, D]."""
    dims = shape_of(t)
    if len(dims) == 3:
        if not heads:
            raise LoweringError(f"Attention with 3-D {what} needs the num_heads attributes")
        b, s, hidden = dims
        if isinstance(hidden, int) and hidden % heads:
            raise LoweringError(f"Attention {what} hidden size {hidden} is not divisible by {heads} heads")
        return ctx.emit(op.reshape(t, [b, s, heads, hidden // heads]))
    if len(dims) == 4:
        return ctx.emit(op.permute_dims(t, [0, 2, 1, 3]))
    raise LoweringError(f"Attention {what} must be 3-D or 4-D")


def _bias(ctx, mask, dtype: str):
    """The additive attention bias, 4-D: a boolean mask becomes 0 / lowest where False."""
    if dtype_of(mask) == "bool":
        lowest = float(np.finfo(np.dtype(dtype)).min)
        mask = op.where(mask, relax.const(0.0, dtype), relax.const(lowest, dtype))
        mask = ctx.emit(mask)
    elif dtype_of(mask) != dtype:
        # ONNX types the mask apart from Q (a float32 mask with float16 Q): clip it into Q's range
        # (float32's lowest would round to -inf) and convert, so the bias add stays in Q's type.
        info = np.finfo(np.dtype(dtype)) if dtype != "bfloat16" else np.finfo(np.float32)
        mask = ctx.emit(op.astype(op.clip(mask, float(info.min), float(info.max)), dtype))
    dims = shape_of(mask)
    if len(dims) < 4:
        mask = ctx.emit(op.reshape(mask, [1] * (4 - len(dims)) + list(dims)))
    return mask


def Attention(ctx, q, k, v, attn_mask=None, past_key=None, past_value=None, *, is_causal=0, kv_num_heads=None,
              q_num_heads=None, qk_matmul_output_mode=0, scale=None, softcap=0.0, softmax_precision=None):
    if past_key is not None or past_value is not None:
        raise LoweringError("Attention with a KV cache (past_key / past_value) is not supported")
    if softcap:
        raise LoweringError("Attention with softcap is not supported")
    if any(out is not None and out.uses() for out in ctx.node.outputs[1:]):
        raise LoweringError("Attention's present_key / present_value / qk_matmul outputs are not supported")
    rank = len(shape_of(q))
    query = _to_bsnh(ctx, q, q_num_heads, "query")
    key = _to_bsnh(ctx, k, kv_num_heads, "key")
    value = _to_bsnh(ctx, v, kv_num_heads, "value")
    q_heads, kv_heads = shape_of(query)[2], shape_of(key)[2]
    if q_heads != kv_heads:  # grouped-query attention: each K/V head serves q_heads / kv_heads queries
        if not (isinstance(q_heads, int) and isinstance(kv_heads, int) and q_heads % kv_heads == 0):
            raise LoweringError(f"Attention with {q_heads} query heads and {kv_heads} key/value heads")
        key = ctx.emit(op.repeat(key, q_heads // kv_heads, axis=2))
        value = ctx.emit(op.repeat(value, q_heads // kv_heads, axis=2))
    bias = None if attn_mask is None else _bias(ctx, attn_mask, dtype_of(q))
    if scale is None:
        head_size = shape_of(query)[3]
        scale = 1.0 / float(np.sqrt(head_size))
    out = ctx.emit(op.nn.attention(query, key, value, bias, scale=float(scale),
                                   causal_mask="TopLeft" if is_causal else None))
    if rank == 3:
        b, s, h, d = shape_of(out)
        result = op.reshape(out, [b, s, h * d])
    else:
        result = op.permute_dims(out, [0, 2, 1, 3])
    return [result] + [None] * (len(ctx.node.outputs) - 1)


def Swish(ctx, x, *, alpha=1.0):
    gate = op.sigmoid(x if alpha == 1.0 else op.multiply(x, scalar(x, alpha)))
    return op.multiply(x, gate)


CONVERTERS = {"Attention": Attention, "Swish": Swish}


_ATTENTION_OPS = (tvm.ir.Op.get("relax.nn.attention"), tvm.ir.Op.get("relax.nn.attention_bias"))


def _fused_attention(bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr | None:
    """The call as lepton-opt's CPU attention kernel (:mod:`lepton_opt.targets.attention`), or
    None where that kernel does not apply (see ``attention.supported``)."""
    from lepton_opt.targets import attention

    attrs = call.attrs
    if attrs.window_size is not None:
        return None
    query, key, value = call.args[:3]
    bias = call.args[3] if len(call.args) > 3 else None
    q_shape, k_shape = shape_of(query), shape_of(key)
    if attention.supported(q_shape, k_shape, shape_of(value), dtype_of(query)) is not None:
        return None
    if bias is not None and (dtype_of(bias) != "float32" or len(shape_of(bias)) != 4
                             or not all(isinstance(d, int) for d in shape_of(bias))):
        return None
    q_len, kv_len, head_dim = q_shape[1], k_shape[1], q_shape[3]
    scale = float(attrs.scale.value) if attrs.scale is not None else 1.0 / float(np.sqrt(head_dim))
    offset = None
    if attrs.causal_mask is not None:
        offset = 0 if attrs.causal_mask == "TopLeft" else kv_len - q_len
    if bias is not None:  # to the kernel's padded query / key axes (where not broadcast)
        after = [0 if n == 1 else want - n for n, want in zip(shape_of(bias)[2:], attention.padded(q_len, kv_len))]
        if any(after):  # pad_width: (before, after) of each axis
            bias = bb.emit(op.nn.pad(bias, [0, 0, 0, 0, 0, after[0], 0, after[1]]))
    return bb.call_te(attention.compute, query, key, value, bias, scale, offset, primfunc_name_hint="attention")


def _expand_attention(bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr | None:
    """softmax(Q K^T * scale + bias [+ causal]) V on BSNH tensors, as batch matmuls; None if the
    call uses what the expansion does not cover (a sliding window, a symbolic causal length)."""
    attrs = call.attrs
    if attrs.window_size is not None:
        return None
    query, key, value = call.args[:3]
    bias = call.args[3] if len(call.args) > 3 else None
    dtype = out_dtype = dtype_of(query)
    if dtype in ("float16", "bfloat16"):  # scores, softmax and sums in float32, rounded once at the end
        dtype = "float32"
        query, key, value = (bb.emit(op.astype(t, dtype)) for t in (query, key, value))
        if bias is not None:
            bias = bb.emit(op.astype(bias, dtype))
    q_len, kv_len, head_dim = shape_of(query)[1], shape_of(key)[1], shape_of(query)[3]
    scale = float(attrs.scale.value) if attrs.scale is not None else 1.0 / float(np.sqrt(head_dim))
    q4 = bb.emit(op.permute_dims(query, [0, 2, 1, 3]))
    k_t = bb.emit(op.permute_dims(key, [0, 2, 3, 1]))
    v4 = bb.emit(op.permute_dims(value, [0, 2, 1, 3]))
    scores = bb.emit(op.multiply(bb.emit(op.matmul(q4, k_t)), relax.const(scale, dtype)))
    if bias is not None:
        scores = bb.emit(op.add(scores, bias))
    if attrs.causal_mask is not None:
        if not (isinstance(q_len, int) and isinstance(kv_len, int)):
            return None
        offset = 0 if attrs.causal_mask == "TopLeft" else kv_len - q_len
        allowed = np.tril(np.ones((q_len, kv_len), bool), k=offset)
        causal = np.where(allowed, 0.0, np.finfo(np.dtype(dtype)).min).astype(dtype)
        scores = bb.emit(op.add(scores, relax.const(causal, dtype)))
    probs = bb.emit(op.nn.softmax(scores, axis=-1))
    out = op.permute_dims(bb.emit(op.matmul(probs, v4)), [0, 2, 1, 3])
    return out if out_dtype == dtype else op.astype(bb.emit(out), out_dtype)


@relax.expr_functor.mutator
class _AttentionExpander(relax.PyExprMutator):
    def visit_call_(self, call: relax.Call) -> relax.Expr:
        call = super().visit_call_(call)
        if isinstance(call, relax.Call) and any(call.op.same_as(o) for o in _ATTENTION_OPS):
            lowered = _fused_attention(self.builder_, call)
            if lowered is None:
                lowered = _expand_attention(self.builder_, call)
            if lowered is not None:
                return lowered
        return call


# ``nn.attention`` -> lepton-opt's CPU attention kernel where it applies (float32, static
# shapes, head sizes multiples of 16, at least 4 queries), else batch matmuls + softmax.
expand_attention_pass = mutator_pass("LeptonExpandAttention", _AttentionExpander)
