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


def padded(queries: int, keys: int) -> tuple[int, int]:
    """(queries, keys) as the kernel computes them: whole row blocks, whole key vectors."""
    return _round_up(queries, row_block(queries)), _round_up(keys, LANES)


def supported(q_shape, k_shape, v_shape, dtype: str) -> str | None:
    """Why the kernel cannot take these BSNH shapes (None if it can)."""
    if dtype != "float32":
        return "float32 only"
    if not all(isinstance(d, int) for d in (*q_shape, *k_shape, *v_shape)):
        return "dynamic shape"
    _, queries, _, head = q_shape
    if head % LANES or v_shape[3] % LANES:
        return f"head sizes {head} (Q, K) and {v_shape[3]} (V) must be multiples of {LANES}"
    if queries < MIN_ROWS:
        return f"{queries} queries are fewer than a block of {MIN_ROWS} rows"
    return None


def compute(q: te.Tensor, k: te.Tensor, v: te.Tensor, bias: te.Tensor | None, scale: float,
            causal_offset: int | None) -> te.Tensor:
    """``q`` and ``k`` [B, S, H, D] and [B, L, H, D], ``v`` [B, L, H, Dv], ``bias`` 4-D, broadcastable to
    [B, H, S', L'] where (S', L') = :func:`padded` (S, L): its query and key axes are 1 or
    padded (the caller pads them; the padding is never read into a probability)
    -> [B, S, H, Dv]. ``causal_offset``: key ``j`` is masked for query ``i`` when
    ``j > i + offset`` (0: top-left causal).

    The masks are selects, not ``if_then_else``: TVM scalarizes a vector loop holding an
    ``if_then_else`` with a vector condition, and every index a select reads is in bounds."""
    batch, queries, heads, head = (int(d) for d in q.shape)
    keys, head_v = int(k.shape[1]), int(v.shape[3])
    queries_padded, keys_padded = padded(queries, keys)
    if bias is not None and [int(n) for n in bias.shape[2:]] not in (
            [a, b] for a in (1, queries_padded) for b in (1, keys_padded)):
        raise ValueError(f"attention bias {list(bias.shape)} is not padded to {queries_padded} x {keys_padded}")
    zero = tvm.tirx.const(0.0, "float32")
    lowest = tvm.tirx.const(float(np.finfo(np.float32).min), "float32")

    def key_t(b, h, d, j):
        if keys_padded == keys:
            return k[b, j, h, d]
        return tvm.tirx.Select(j < keys, k[b, tvm.tirx.min(j, keys - 1), h, d], zero)

    def query(b, i, h, d):
        # A padding row reads the last query; its output is cropped.
        return q[b, i if queries_padded == queries else tvm.tirx.min(i, queries - 1), h, d]

    kt = te.compute((batch, heads, head, keys_padded), key_t, name=BLOCK_PREFIX + "kt")
    dk = te.reduce_axis((0, head), "dk")
    scores = te.compute((batch, heads, queries_padded, keys_padded),
                        lambda b, h, i, j: te.sum(query(b, i, h, dk) * kt[b, h, dk, j], axis=dk),
                        name=BLOCK_PREFIX + "qk")

    def logit(b, h, i, j):
        x = scores[b, h, i, j] * tvm.tirx.const(scale, "float32")
        if bias is not None:
            index = [0 if int(n) == 1 else axis for n, axis in zip(bias.shape, (b, h, i, j))]
            x = x + bias[tuple(index)]
        if causal_offset is not None:
            x = tvm.tirx.Select(j > i + causal_offset, lowest, x)
        if keys_padded != keys:
            x = tvm.tirx.Select(j >= keys, lowest, x)
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
    weighted = te.compute((batch, queries_padded, heads, head_v),
                          lambda b, i, h, d: te.sum(probs[b, h, i, j3] * v[b, j3, h, d], axis=j3),
                          name=BLOCK_PREFIX + "pv")
    out = te.compute((batch, queries_padded, heads, head_v),
                     lambda b, i, h, d: weighted[b, i, h, d] / row_sum[b, h, i], name=BLOCK_PREFIX + "out")
    if queries_padded == queries:
        return out
    return te.compute((batch, queries, heads, head_v), lambda b, i, h, d: out[b, i, h, d],
                      name=BLOCK_PREFIX + "crop")
