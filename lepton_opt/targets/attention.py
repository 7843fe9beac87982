"""The CPU attention kernel: ``softmax(Q K^T * scale + bias) V`` in one function.

TVM has no CPU attention kernel, and its legalized ``nn.attention`` is one loop nest our
schedules cannot tile (a BERT-base layer took 48 ms). Expanded into batch matmuls and a softmax,
the pieces run well but write the ``[B, H, S, L]`` scores to memory twice and transpose Q, K, V
and the output around them. This kernel keeps everything of a block of query rows in cache:
for each (batch, head), in parallel, and each block of ``rows`` queries of it,

1. the ``rows x L`` scores, a register-tiled matmul of Q's rows with K^T (each head's K is
   transposed once, into a ``[D, L]`` buffer that stays in L1 while the head's row blocks use
   it: the key axis is then contiguous, vectors over keys);
2. scale, bias (the attention mask) and the causal mask applied, the row maxima, ``exp`` of the
   shifted scores (``topi.fast_exp``: vectorized) and the row sums;
3. the ``rows x D`` output, a register-tiled matmul of the probabilities with V (read in place
   from ``[B, L, H, D]``), divided by the row sums.

Q, V and the output stay in the BSNH layout the ONNX op and the projections use: no transposes.
Any key length and query count are taken (ViT's 197 tokens): the keys are padded to whole
vectors (K^T's padding is zero, its scores are masked to the lowest float, so their
probabilities are 0 and the output sums over the real keys only), the queries to whole row
blocks (the padding rows read the last query and are cropped from the output).
:func:`lepton_opt.targets.cpu_schedule._rule_attention` is the schedule.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import te, topi

BLOCK_PREFIX = "lepton_attention_"
LANES = 16  # float32 lanes of the vector axes (keys for the scores, head dim for the output)


MIN_ROWS, MAX_ROWS = 4, 8  # query rows per block: each K^T / V vector loaded is used by all of them


def row_block(queries: int) -> int:
    """Query rows per block: a divisor of ``queries`` from 8 down to 4 if there is one, else the
    block size from 4 to 8 that pads ``queries`` least (the larger on a tie)."""
    for r in range(min(MAX_ROWS, queries), MIN_ROWS - 1, -1):
        if queries % r == 0:
            return r
    return min(range(MAX_ROWS, MIN_ROWS - 1, -1), key=lambda r: -(-queries // r) * r)


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def supported(q_shape, k_shape, dtype: str) -> str | None:
    """Why the kernel cannot take these BSNH shapes (None if it can)."""
    if dtype != "float32":
        return "float32 only"
    if not all(isinstance(d, int) for d in (*q_shape, *k_shape)):
        return "dynamic shape"
    _, queries, _, head = q_shape
    if head % LANES:
        return f"head size {head} must be a multiple of {LANES}"
    if queries < MIN_ROWS:
        return f"{queries} queries are fewer than a block of {MIN_ROWS} rows"
    return None


def compute(q: te.Tensor, k: te.Tensor, v: te.Tensor, bias: te.Tensor | None, scale: float,
            causal_offset: int | None) -> te.Tensor:
    """``q`` [B, S, H, D], ``k`` and ``v`` [B, L, H, D], ``bias`` broadcastable to [B, H, S, L]
    (4-D) -> [B, S, H, D]. ``causal_offset``: key ``j`` is masked for query ``i`` when
    ``j > i + offset`` (0: top-left causal)."""
    batch, queries, heads, head = (int(d) for d in q.shape)
    keys = int(k.shape[1])
    keys_padded = _round_up(keys, LANES)
    queries_padded = _round_up(queries, row_block(queries))
    zero = tvm.tirx.const(0.0, "float32")
    lowest = tvm.tirx.const(float(np.finfo(np.float32).min), "float32")

    def last(index, extent: int, padded: int):
        # Padding positions read the last real one (in bounds, then masked or cropped).
        return index if padded == extent else tvm.tirx.min(index, extent - 1)

    def key_t(b, h, d, j):
        if keys_padded == keys:
            return k[b, j, h, d]
        return te.if_then_else(j < keys, k[b, last(j, keys, keys_padded), h, d], zero)

    kt = te.compute((batch, heads, head, keys_padded), key_t, name=BLOCK_PREFIX + "kt")
    dk = te.reduce_axis((0, head), "dk")
    scores = te.compute((batch, heads, queries_padded, keys_padded),
                        lambda b, h, i, j: te.sum(q[b, last(i, queries, queries_padded), h, dk] * kt[b, h, dk, j],
                                                  axis=dk),
                        name=BLOCK_PREFIX + "qk")

    def logit(b, h, i, j):
        x = scores[b, h, i, j] * tvm.tirx.const(scale, "float32")
        if bias is not None:
            axes = (b, h, last(i, queries, queries_padded), last(j, keys, keys_padded))
            index = [0 if int(n) == 1 else axis for n, axis in zip(bias.shape, axes)]
            x = x + bias[tuple(index)]
        if causal_offset is not None:
            x = te.if_then_else(j > i + causal_offset, lowest, x)
        if keys_padded != keys:
            x = te.if_then_else(j >= keys, lowest, x)
        return x

    logits = te.compute((batch, heads, queries_padded, keys_padded), logit, name=BLOCK_PREFIX + "logits")
    j1 = te.reduce_axis((0, keys_padded), "j1")
    row_max = te.compute((batch, heads, queries_padded), lambda b, h, i: te.max(logits[b, h, i, j1], axis=j1),
                         name=BLOCK_PREFIX + "max")
    shifted = te.compute((batch, heads, queries_padded, keys_padded),
                         lambda b, h, i, j: logits[b, h, i, j] - row_max[b, h, i], name=BLOCK_PREFIX + "shift")
    probs = topi.fast_exp(shifted)
    j2 = te.reduce_axis((0, keys_padded), "j2")
    row_sum = te.compute((batch, heads, queries_padded), lambda b, h, i: te.sum(probs[b, h, i, j2], axis=j2),
                         name=BLOCK_PREFIX + "sum")
    j3 = te.reduce_axis((0, keys), "j3")  # the real keys only
    weighted = te.compute((batch, queries_padded, heads, head),
                          lambda b, i, h, d: te.sum(probs[b, h, i, j3] * v[b, j3, h, d], axis=j3),
                          name=BLOCK_PREFIX + "pv")
    out = te.compute((batch, queries_padded, heads, head),
                     lambda b, i, h, d: weighted[b, i, h, d] / row_sum[b, h, i], name=BLOCK_PREFIX + "out")
    if queries_padded == queries:
        return out
    return te.compute((batch, queries, heads, head), lambda b, i, h, d: out[b, i, h, d], name=BLOCK_PREFIX + "crop")
