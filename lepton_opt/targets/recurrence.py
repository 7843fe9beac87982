"""LSTM and GRU recurrences as one CPU kernel each, with a loop over time.

Unrolled (``ops/rnn.py``), a recurrence over ``T`` steps is ``T`` x ~10 Relax bindings and as
many kernel launches per run: a 100-step LSTM took 13.6 s to build and ran 2x slower than
onnxruntime; nine bidirectional GRUs over a sentence did not build in 4 minutes. Here the input
projection of every step stays one matmul (``X @ W^T + biases``, computed by the caller), and
the recurrence is one hand-written TIR function: for each step and batch row, the gate vector
``xw[t] + h @ R^T`` is accumulated along the output axis (a contiguous, vectorized loop), then
the gate equations update ``h`` (and ``c``) in place. Sigmoid and tanh use the same rational
approximation as TVM's ``fast_tanh`` (Eigen's, within a few float32 ulps), written inline so
that the gate loop vectorizes too.

The kernels take float32 with the default activations, no clip and no peepholes; ``sequence_lens``
is honoured per batch row (a row past its length keeps its state and writes zeros). Anything
else stays unrolled.
"""

from __future__ import annotations

from collections.abc import Callable

from tvm.script import tirx as T

# A step's matrix-vector product of at least this many multiply-adds is split across the thread
# pool (a 512-unit LSTM: 1M per step, its 4 MB weight streamed from L3 by one core); below it,
# waking the pool every step costs more than it saves.
PARALLEL_MACS = 1 << 18


def _chunks(hidden: int, width: int) -> tuple[int, Callable]:
    """(chunk count, loop kind) for splitting a product's ``width`` output columns across threads."""
    if hidden * width < PARALLEL_MACS:
        return 1, T.serial
    for parts in (16, 8, 4, 2):
        if width % parts == 0:
            return parts, T.parallel
    return 1, T.serial

# Eigen's float tanh: tanh(x) = x * P(x^2) / Q(x^2) on [-9, 9] (TVM's topi.fast_tanh).
_P = (-2.76076847742355e-16, 2.00018790482477e-13, -8.60467152213735e-11, 5.12229709037114e-08,
      1.48572235717979e-05, 6.37261928875436e-04, 4.89352455891786e-03)
_Q = (1.19825839466702e-06, 1.18534705686654e-04, 2.26843463243900e-03, 4.89352518554385e-03)


def _tanh(x):
    x = T.max(T.min(x, T.float32(9.0)), T.float32(-9.0))
    x2 = x * x
    p = T.float32(_P[0])
    for c in _P[1:]:
        p = p * x2 + T.float32(c)
    q = T.float32(_Q[0])
    for c in _Q[1:]:
        q = q * x2 + T.float32(c)
    return x * p / q


def _sigmoid(x):
    return T.float32(0.5) * _tanh(T.float32(0.5) * x) + T.float32(0.5)


def lstm_kernel(seq: int, batch: int, hidden: int, reverse: bool, masked: bool = False):
    """(xw [seq, batch, 4H] with biases, R^T [H, 4H], h0, c0 [batch, H], lens [batch]) -> (Y [seq,
    batch, H], h_last, c_last); ONNX gate order i, o, f, c. With ``masked``, a batch row at a step
    ``t >= lens[b]`` keeps its state and writes zeros to Y (``sequence_lens``)."""
    H, G = hidden, 4 * hidden
    P, loop = _chunks(H, G)
    W = G // P

    @T.prim_func(private=True)
    def lstm_recurrence(xw: T.Buffer((seq, batch, G), "float32"), rt: T.Buffer((H, G), "float32"),
                        h0: T.Buffer((batch, H), "float32"), c0: T.Buffer((batch, H), "float32"),
                        lens: T.Buffer((batch,), "int64"),
                        y: T.Buffer((seq, batch, H), "float32"), hn: T.Buffer((batch, H), "float32"),
                        cn: T.Buffer((batch, H), "float32")):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        g = T.alloc_buffer((G,), "float32")
        for b, j in T.grid(batch, H):
            hn[b, j] = h0[b, j]
            cn[b, j] = c0[b, j]
        for step in range(seq):
            for b in range(batch):
                if not masked or T.int64(seq - 1 - step if reverse else step) < lens[b]:
                    for j in range(G):
                        g[j] = xw[seq - 1 - step if reverse else step, b, j]
                    for c in loop(P):
                        for k in range(H):
                            for j in range(W):
                                g[c * W + j] = g[c * W + j] + hn[b, k] * rt[k, c * W + j]
                    for j in range(H):
                        cn[b, j] = _sigmoid(g[2 * H + j]) * cn[b, j] + _sigmoid(g[j]) * _tanh(g[3 * H + j])
                        hn[b, j] = _sigmoid(g[H + j]) * _tanh(cn[b, j])
                        y[seq - 1 - step if reverse else step, b, j] = hn[b, j]
                else:
                    for j in range(H):
                        y[seq - 1 - step if reverse else step, b, j] = T.float32(0)

    return lstm_recurrence


def gru_kernel(seq: int, batch: int, hidden: int, reverse: bool, linear_before_reset: bool, masked: bool = False):
    """(xw [seq, batch, 3H] with Wb (+ Rb of z and r, and of h unless linear_before_reset),
    R^T [H, 3H], Rb_h [H], h0 [batch, H], lens [batch]) -> (Y [seq, batch, H], h_last); gate
    order z, r, h; ``masked`` as for :func:`lstm_kernel`."""
    H, G = hidden, 3 * hidden
    P, loop = _chunks(H, 2 * H)
    W = 2 * H // P
    Ph, loop_h = _chunks(H, H)
    Wh = H // Ph

    @T.prim_func(private=True)
    def gru_recurrence(xw: T.Buffer((seq, batch, G), "float32"), rt: T.Buffer((H, G), "float32"),
                       rbh: T.Buffer((H,), "float32"), h0: T.Buffer((batch, H), "float32"),
                       lens: T.Buffer((batch,), "int64"),
                       y: T.Buffer((seq, batch, H), "float32"), hn: T.Buffer((batch, H), "float32")):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        g = T.alloc_buffer((G,), "float32")
        rh = T.alloc_buffer((H,), "float32")
        for b, j in T.grid(batch, H):
            hn[b, j] = h0[b, j]
        for step in range(seq):
            for b in range(batch):
                if not masked or T.int64(seq - 1 - step if reverse else step) < lens[b]:
                    for j in range(G):
                        g[j] = xw[seq - 1 - step if reverse else step, b, j]
                    if linear_before_reset:
                        for j in range(H):
                            rh[j] = rbh[j]
                        for c in loop(P):
                            for k in range(H):
                                for j in range(W):
                                    g[c * W + j] = g[c * W + j] + hn[b, k] * rt[k, c * W + j]
                        for c in loop_h(Ph):
                            for k in range(H):
                                for j in range(Wh):
                                    rh[c * Wh + j] = rh[c * Wh + j] + hn[b, k] * rt[k, 2 * H + c * Wh + j]
                        for j in range(H):
                            g[2 * H + j] = g[2 * H + j] + _sigmoid(g[H + j]) * rh[j]
                    else:
                        for c in loop(P):
                            for k in range(H):
                                for j in range(W):
                                    g[c * W + j] = g[c * W + j] + hn[b, k] * rt[k, c * W + j]
                        for j in range(H):
                            rh[j] = _sigmoid(g[H + j]) * hn[b, j]
                        for c in loop_h(Ph):
                            for k in range(H):
                                for j in range(Wh):
                                    g[2 * H + c * Wh + j] = g[2 * H + c * Wh + j] + rh[k] * rt[k, 2 * H + c * Wh + j]
                    for j in range(H):
                        hh = _tanh(g[2 * H + j])
                        hn[b, j] = hh + _sigmoid(g[j]) * (hn[b, j] - hh)
                        y[seq - 1 - step if reverse else step, b, j] = hn[b, j]
                else:
                    for j in range(H):
                        y[seq - 1 - step if reverse else step, b, j] = T.float32(0)

    return gru_recurrence
