"""Recurrent converters: LSTM, GRU and RNN, unrolled over a static number of time steps.

The input projection of every time step is one matmul (``X @ W^T + Wb + Rb``) split per step;
each step then adds ``H_{t-1} @ R^T`` and applies the gate equations of the ONNX spec. The
sequence length must therefore be known at compile time (the batch may stay symbolic).

``sequence_lens`` is honoured by masking: at step ``t`` a batch entry with ``len <= t`` keeps
its state and writes zeros to ``Y``. Running the reverse direction from the last step down to 0
with the same mask starts each entry at its own last valid step, as the spec requires.

``output_sequence`` (opset 1) needs no handling: ``Y`` is computed only when it is used.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import tvm
from tvm import relax

from lepton_opt.targets.lower import LoweringError, dtype_of, shape_of

op = relax.op

# Name -> (uses alpha, uses beta, default alpha, default beta); names are matched case-insensitively.
_ACTIVATIONS = {
    "relu": (False, False, 0.0, 0.0), "tanh": (False, False, 0.0, 0.0),
    "sigmoid": (False, False, 0.0, 0.0), "affine": (True, True, 1.0, 0.0),
    "leakyrelu": (True, False, 0.01, 0.0), "thresholdedrelu": (True, False, 1.0, 0.0),
    "scaledtanh": (True, True, 1.0, 1.0), "hardsigmoid": (True, True, 0.2, 0.5),
    "elu": (True, False, 1.0, 0.0), "softsign": (False, False, 0.0, 0.0),
    "softplus": (False, False, 0.0, 0.0),
}


def _c(x: relax.Expr, value: float) -> relax.Expr:
    return relax.const(value, dtype_of(x))


def _activation(name: str, alpha: float, beta: float) -> Callable[[relax.Expr], relax.Expr]:
    key = name.lower()
    if key == "relu":
        return op.nn.relu
    if key == "tanh":
        return op.tanh
    if key == "sigmoid":
        return op.sigmoid
    if key == "affine":
        return lambda x: op.add(op.multiply(x, _c(x, alpha)), _c(x, beta))
    if key == "leakyrelu":
        return lambda x: op.where(op.less(x, _c(x, 0)), op.multiply(x, _c(x, alpha)), x)
    if key == "thresholdedrelu":
        return lambda x: op.where(op.less(x, _c(x, alpha)), _c(x, 0), x)
    if key == "scaledtanh":
        return lambda x: op.multiply(_c(x, alpha), op.tanh(op.multiply(x, _c(x, beta))))
    if key == "hardsigmoid":
        return lambda x: op.clip(op.add(op.multiply(x, _c(x, alpha)), _c(x, beta)), 0.0, 1.0)
    if key == "elu":
        return lambda x: op.where(op.less(x, _c(x, 0)),
                                  op.multiply(_c(x, alpha), op.subtract(op.exp(x), _c(x, 1))), x)
    if key == "softsign":
        return lambda x: op.divide(x, op.add(op.abs(x), _c(x, 1)))
    if key == "softplus":
        return lambda x: op.add(op.maximum(x, _c(x, 0)),
                                op.log(op.add(op.exp(op.negative(op.abs(x))), _c(x, 1))))
    raise LoweringError(f"unsupported activation {name!r}")


def _activations(names, alphas, betas, defaults: list[str], num_directions: int) -> list[list[Callable]]:
    """Activation functions per direction; alpha/beta are consumed in order by the ones using them."""
    names = [n.decode() if isinstance(n, bytes) else n for n in (names or [])]
    if not names:
        names = defaults * num_directions
    elif len(names) == len(defaults) and num_directions == 2:
        names = names * 2
    if len(names) != len(defaults) * num_directions:
        raise LoweringError(f"expected {len(defaults) * num_directions} activations, got {len(names)}")
    alphas, betas = list(alphas or []), list(betas or [])
    fns = []
    for name in names:
        if name.lower() not in _ACTIVATIONS:
            raise LoweringError(f"unsupported activation {name!r}")
        uses_alpha, uses_beta, alpha, beta = _ACTIVATIONS[name.lower()]
        if uses_alpha and alphas:
            alpha = alphas.pop(0)
        if uses_beta and betas:
            beta = betas.pop(0)
        fns.append(_activation(name, alpha, beta))
    n = len(defaults)
    return [fns[d * n:(d + 1) * n] for d in range(num_directions)]


def _stack(emit, parts: list[relax.Expr], axis: int, hint: str) -> relax.Expr:
    # (relax.op.stack crashes TVM 0.27's ConvertLayout pass: concat expanded parts instead)
    if len(parts) == 1:
        return emit(op.expand_dims(parts[0], axis), hint)
    return emit(op.concat([emit(op.expand_dims(t, axis), hint) for t in parts], axis=axis), hint)


def _split(emit, t: relax.Expr, sections, hint: str) -> list[relax.Expr]:
    parts = emit(op.split(t, sections, axis=1), hint)
    n = sections if isinstance(sections, int) else len(sections) + 1
    return [emit(relax.TupleGetItem(parts, k), hint) for k in range(n)]


class _Params:
    """Per-direction weights, sliced at compile time when they are constants."""

    def __init__(self, ctx, expr: relax.Expr | None, index: int):
        self.ctx, self.expr = ctx, expr
        self.array = None
        if expr is None:
            return
        known = ctx.known(index)
        if known is not None and not known.is_symbolic:
            self.array = known.numeric()
        elif isinstance(expr, tvm.ir.Constant):
            self.array = expr.value.numpy()

    def direction(self, d: int, lo: int | None = None, hi: int | None = None,
                  transpose: bool = False) -> relax.Expr:
        """``param[d, lo:hi]`` (rows of a weight, or a bias segment), optionally transposed."""
        if self.array is not None:
            a = self.array[d, lo:hi]
            return relax.const(np.ascontiguousarray(a.T if transpose else a), dtype_of(self.expr))
        rows = shape_of(self.expr)[1]
        t = op.strided_slice(self.expr, [0, 1], [d, 0 if lo is None else lo],
                             [d + 1, rows if hi is None else hi])
        t = self.ctx.emit(op.squeeze(self.ctx.emit(t), [0]))
        return self.ctx.emit(op.permute_dims(t, [1, 0])) if transpose else t


def _unroll(ctx, kind: str, x, w, r, b, sequence_lens, initial_h, initial_c, p, *, activations,
            activation_alpha, activation_beta, clip, direction, hidden_size, layout, input_forget=0,
            linear_before_reset=0):
    node = ctx.node
    if isinstance(direction, bytes):
        direction = direction.decode()
    if direction not in ("forward", "reverse", "bidirectional"):
        raise LoweringError(f"unsupported direction {direction!r}")
    num_dir = 2 if direction == "bidirectional" else 1
    gates = {"LSTM": 4, "GRU": 3, "RNN": 1}[kind]
    defaults = {"LSTM": ["Sigmoid", "Tanh", "Tanh"], "GRU": ["Sigmoid", "Tanh"], "RNN": ["Tanh"]}[kind]
    acts = _activations(activations, activation_alpha, activation_beta, defaults, num_dir)
    dtype = dtype_of(x)
    name = ctx.lowerer.expr_name(node)

    def emit(expr, hint):
        return ctx.emit(expr, f"{name}_{hint}")

    if layout:
        x = emit(op.permute_dims(x, [1, 0, 2]), "x")
        initial_h = None if initial_h is None else emit(op.permute_dims(initial_h, [1, 0, 2]), "h0")
        initial_c = None if initial_c is None else emit(op.permute_dims(initial_c, [1, 0, 2]), "c0")
    seq, batch, _ = shape_of(x)
    if not isinstance(seq, int):
        raise ctx.lowerer.symbolic_error(np.array([seq], dtype=object), f"{kind} node {node.name!r} sequence length")
    hidden = hidden_size or shape_of(r)[-1]
    if not isinstance(hidden, int):
        raise LoweringError("hidden_size must be static")
    H = hidden

    W, R, B, P = _Params(ctx, w, 1), _Params(ctx, r, 2), _Params(ctx, b, 3), _Params(ctx, p, 7)

    # Step masks for sequence_lens (None when every sequence has the full length).
    masks: list[relax.Expr | None] = [None] * seq
    if sequence_lens is not None:
        lens = ctx.known(4)
        full = lens is not None and not lens.is_symbolic and bool(np.all(lens.numeric() >= seq))
        if not full:
            col = emit(op.reshape(op.astype(sequence_lens, "int64"), [batch, 1]), "lens")
            masks = [emit(op.greater(col, relax.const(t, "int64")), f"mask{t}") for t in range(seq)]

    def clipped(t, hint):
        """A gate's pre-activation, clipped; always a bound variable (activations reuse it)."""
        t = emit(t, hint)
        return emit(op.clip(t, -float(clip), float(clip)), hint) if clip is not None else t

    def bias(d, lo, hi):
        """Wb[lo:hi] + Rb[lo:hi] of direction d (None without B)."""
        if b is None:
            return None
        if B.array is not None:
            a = B.array[d, lo:hi] + B.array[d, gates * H + lo:gates * H + hi]
            return relax.const(np.ascontiguousarray(a), dtype)
        return emit(op.add(B.direction(d, lo, hi), B.direction(d, gates * H + lo, gates * H + hi)), "b")

    looped = _looped(ctx, kind, dtype, batch, activations, activation_alpha, activation_beta,
                     defaults, clip, p, input_forget)
    lens = None
    if looped and any(m is not None for m in masks):
        lens = emit(op.astype(sequence_lens, "int64"), "lens")
    ys_all, hs_last, cs_last = [], [], []
    for d in range(num_dir):
        reverse = direction == "reverse" or d == 1
        f_act = acts[d][0]
        # Input projection of every step at once: [seq, batch, gates*H].
        xw = op.matmul(x, W.direction(d, transpose=True))
        if kind == "GRU" and linear_before_reset:
            bz = bias(d, 0, 2 * H)
            full_b = None if b is None else emit(op.concat([bz, B.direction(d, 2 * H, 3 * H)], axis=0), "b")
        else:
            full_b = bias(d, 0, gates * H)
        if full_b is not None:
            xw = op.add(emit(xw, "xw"), full_b)
        xw = emit(xw, "xw")

        if kind == "GRU":
            r_zr = R.direction(d, 0, 2 * H, transpose=True)
            r_h = R.direction(d, 2 * H, 3 * H, transpose=True)
            rb_h = None
            if linear_before_reset and b is not None:
                rb_h = B.direction(d, 5 * H, 6 * H)
        else:
            r_all = R.direction(d, transpose=True)
        if p is not None:
            p_i, p_o, p_f = (P.direction(d, k * H, (k + 1) * H) for k in range(3))

        h = (emit(op.squeeze(op.strided_slice(initial_h, [0], [d], [d + 1]), [0]), "h0")
             if initial_h is not None else emit(op.zeros([batch, H], dtype), "h0"))
        c = None
        if kind == "LSTM":
            c = (emit(op.squeeze(op.strided_slice(initial_c, [0], [d], [d + 1]), [0]), "c0")
                 if initial_c is not None else emit(op.zeros([batch, H], dtype), "c0"))

        if looped:
            y_d, h, c = _recurrence_call(ctx, emit, kind, xw, R, B, d, h, c, lens, seq, batch, H, reverse,
                                         bool(linear_before_reset), b is not None)
            ys_all.append(y_d)
            hs_last.append(h)
            cs_last.append(c)
            continue
        ys: list[relax.Expr] = [None] * seq
        for t in (range(seq - 1, -1, -1) if reverse else range(seq)):
            # (take with a constant index: one kernel for every step; a seq-way split is slow to build)
            xt = emit(op.take(xw, relax.const(t, "int64"), axis=0), f"x{t}")
            if kind == "LSTM":
                g = emit(op.add(xt, op.matmul(h, r_all)), f"g{t}")
                gi, go, gf, gc = _split(emit, g, 4, f"g{t}")
                if p is not None:
                    gi = op.add(gi, op.multiply(p_i, c))
                    gf = op.add(gf, op.multiply(p_f, c))
                i_t = emit(f_act(clipped(gi, f"i{t}")), f"i{t}")
                if input_forget:
                    f_t = emit(op.subtract(_c(i_t, 1.0), i_t), f"f{t}")
                else:
                    f_t = emit(f_act(clipped(gf, f"f{t}")), f"f{t}")
                c_hat = acts[d][1](clipped(gc, f"c{t}"))
                c_new = emit(op.add(op.multiply(f_t, c), op.multiply(i_t, c_hat)), f"c{t}")
                if p is not None:
                    go = op.add(go, op.multiply(p_o, c_new))
                o_t = f_act(clipped(go, f"o{t}"))
                h_new = emit(op.multiply(o_t, acts[d][2](c_new)), f"h{t}")
            elif kind == "GRU":
                xzr, xh = _split(emit, xt, [2 * H], f"x{t}")
                zr = emit(f_act(clipped(op.add(xzr, op.matmul(h, r_zr)), f"zr{t}")), f"zr{t}")
                z_t, r_t = _split(emit, zr, 2, f"zr{t}")
                if linear_before_reset:
                    rh = op.matmul(h, r_h)
                    if rb_h is not None:
                        rh = op.add(emit(rh, f"rh{t}"), rb_h)
                    pre = op.add(xh, op.multiply(r_t, emit(rh, f"rh{t}")))
                else:
                    pre = op.add(xh, op.matmul(emit(op.multiply(r_t, h), f"rh{t}"), r_h))
                hh = emit(acts[d][1](clipped(pre, f"hh{t}")), f"hh{t}")
                h_new = emit(op.add(hh, op.multiply(z_t, op.subtract(h, hh))), f"h{t}")
            else:
                h_new = emit(f_act(clipped(op.add(xt, op.matmul(h, r_all)), f"h{t}")), f"h{t}")
            mask = masks[t]
            if mask is None:
                ys[t] = h = h_new
                if kind == "LSTM":
                    c = c_new
            else:
                ys[t] = emit(op.where(mask, h_new, _c(h_new, 0.0)), f"y{t}")
                h = emit(op.where(mask, h_new, h), f"h{t}")
                if kind == "LSTM":
                    c = emit(op.where(mask, c_new, c), f"c{t}")
        ys_all.append(ys)
        hs_last.append(h)
        cs_last.append(c)

    outputs = node.outputs
    wanted = [bool(v is not None and v.name) for v in outputs]
    results: list[relax.Expr | None] = [None] * len(outputs)
    if wanted[0]:
        # [seq, num_dir, batch, H]
        # Each direction's steps concatenated on axis 0 ([seq * batch, H]) and reshaped: no
        # per-step expand_dims, which make the fused concat kernel slow to schedule.
        per_dir = [emit(op.reshape(ys_all[d] if not isinstance(ys_all[d], list) else
                                   emit(op.concat(ys_all[d], axis=0), "Y") if seq > 1 else ys_all[d][0],
                                   [seq, 1, batch, H]), "Y") for d in range(num_dir)]
        y = emit(op.concat(per_dir, axis=1), "Y") if num_dir > 1 else per_dir[0]
        results[0] = op.permute_dims(y, [2, 0, 1, 3]) if layout else y
    for k, finals in ((1, hs_last), (2, cs_last)):
        if k < len(outputs) and wanted[k]:
            s = _stack(emit, finals, 0, "Yh" if k == 1 else "Yc")
            results[k] = op.permute_dims(s, [1, 0, 2]) if layout else s
    return results


def _looped(ctx, kind, dtype, batch, activations, alphas, betas, defaults, clip, p, input_forget) -> bool:
    """Whether the recurrence runs as one looped CPU kernel (:mod:`lepton_opt.targets.recurrence`):
    float32 LSTM/GRU with the default activations, no clip, peepholes or input_forget, a static
    batch, on a CPU target. Otherwise it is unrolled."""
    names = [n.decode() if isinstance(n, bytes) else n for n in (activations or [])]
    default = not names or [n.lower() for n in names] in (
        [n.lower() for n in defaults], [n.lower() for n in defaults] * 2)
    return (ctx.lowerer.target_kind == "llvm" and kind in ("LSTM", "GRU") and dtype == "float32"
            and isinstance(batch, int) and default and not alphas and not betas and clip is None
            and p is None and not input_forget)


def _recurrence_call(ctx, emit, kind, xw, R, B, d, h0, c0, lens, seq, batch, H, reverse, linear_before_reset,
                     has_b):
    """One direction's recurrence as a call to the looped kernel: (Y [seq, batch, H], h, c);
    ``lens`` (int64 [batch]) masks the steps past each row's length, None when all are full."""
    from lepton_opt.targets import recurrence

    masked = lens is not None
    if lens is None:
        lens = relax.const(np.full(batch, seq, np.int64), "int64")
    rt = R.direction(d, transpose=True)
    state = relax.TensorType([batch, H], "float32")
    outputs = [relax.TensorType([seq, batch, H], "float32"), state]
    if kind == "LSTM":
        func = recurrence.lstm_kernel(seq, batch, H, reverse, masked)
        args = [xw, rt, h0, c0, lens]
        outputs.append(state)
    else:
        func = recurrence.gru_kernel(seq, batch, H, reverse, linear_before_reset, masked)
        # xw holds Rb_h already unless linear_before_reset (it is added inside the reset product)
        rbh = (B.direction(d, 5 * H, 6 * H) if linear_before_reset and has_b
               else relax.const(np.zeros(H, np.float32)))
        args = [xw, rt, rbh, h0, lens]
    gv = ctx.bb.add_func(func, f"{kind.lower()}_recurrence")
    out = emit(relax.call_tir(gv, args, outputs), "recurrence")
    items = [emit(relax.TupleGetItem(out, k), "recurrence") for k in range(len(outputs))]
    return items[0], items[1], (items[2] if kind == "LSTM" else None)


def LSTM(ctx, x, w, r, b=None, sequence_lens=None, initial_h=None, initial_c=None, p=None, *,
         activation_alpha=None, activation_beta=None, activations=None, clip=None, direction="forward",
         hidden_size=None, input_forget=0, layout=0, output_sequence=0):
    return _unroll(ctx, "LSTM", x, w, r, b, sequence_lens, initial_h, initial_c, p,
                   activations=activations, activation_alpha=activation_alpha,
                   activation_beta=activation_beta, clip=clip, direction=direction,
                   hidden_size=hidden_size, layout=layout, input_forget=input_forget)


def GRU(ctx, x, w, r, b=None, sequence_lens=None, initial_h=None, *, activation_alpha=None,
        activation_beta=None, activations=None, clip=None, direction="forward", hidden_size=None,
        layout=0, linear_before_reset=0, output_sequence=0):
    return _unroll(ctx, "GRU", x, w, r, b, sequence_lens, initial_h, None, None,
                   activations=activations, activation_alpha=activation_alpha,
                   activation_beta=activation_beta, clip=clip, direction=direction,
                   hidden_size=hidden_size, layout=layout, linear_before_reset=linear_before_reset)


def RNN(ctx, x, w, r, b=None, sequence_lens=None, initial_h=None, *, activation_alpha=None,
        activation_beta=None, activations=None, clip=None, direction="forward", hidden_size=None,
        layout=0, output_sequence=0):
    return _unroll(ctx, "RNN", x, w, r, b, sequence_lens, initial_h, None, None,
                   activations=activations, activation_alpha=activation_alpha,
                   activation_beta=activation_beta, clip=clip, direction=direction,
                   hidden_size=hidden_size, layout=layout)


CONVERTERS = {"LSTM": LSTM, "GRU": GRU, "RNN": RNN}
