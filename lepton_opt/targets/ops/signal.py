"""Signal processing: ``STFT`` (opset 17), what torch's dynamo exporter writes for
``torch.stft`` in audio front ends.

The transform is a matrix product: the signal is cut into frames by one gather (a constant
index matrix, ``frame * frame_step + n``) and each frame is multiplied by a DFT basis that has
the window folded in when the window is a constant::

    X[b, f, k] = sum_n x[b, f * step + n] * w[n] * (cos(2 pi k n / L) - i sin(2 pi k n / L))

One ``[L, 2K]`` basis gives the real and imaginary parts in one matmul, so the work runs on the
register-tiled matmul kernel; the basis is computed in float64 and rounded once. Complex
signals (last axis 2) take ``(a + ib)(cos - i sin)``. ``DFT`` (opsets 17 and 20: ``torch.fft``
in dynamo exports) is the same product along any axis, forward or inverse, with the signal cut
or zero-padded to ``dft_length``.
"""

from __future__ import annotations

import numpy as np
from tvm import relax

from lepton_opt.targets.lower import LoweringError, dtype_of, shape_of

op = relax.op


def STFT(ctx, signal, frame_step, window=None, frame_length=None, *, onesided=1):
    dims = shape_of(signal)
    if len(dims) != 3 or not all(isinstance(d, int) for d in dims[1:]):
        raise LoweringError("STFT needs a [batch, length, 1 or 2] signal with a static length")
    length, parts = dims[1], dims[2]
    step = int(ctx.static(1, "STFT's frame_step").reshape(-1)[0])
    win = None if window is None else ctx.known(2)
    if window is not None and win is None and not all(isinstance(d, int) for d in shape_of(window)):
        raise LoweringError("STFT's window needs a static length")
    if frame_length is not None:
        size = int(ctx.static(3, "STFT's frame_length").reshape(-1)[0])
    elif window is not None:
        size = int(shape_of(window)[0])
    else:
        raise LoweringError("STFT needs a window or a frame_length")
    if step <= 0 or size <= 0 or size > length:
        raise LoweringError(f"STFT with frame_step {step} and frame length {size} on a signal of {length}")
    frames = (length - size) // step + 1
    bins = size // 2 + 1 if onesided else size
    dtype = dtype_of(signal)
    n = np.arange(size)
    angle = 2 * np.pi * np.outer(n, np.arange(bins)) / size  # [L, K]
    cos, sin = np.cos(angle), np.sin(angle)
    constant_window = win is not None and not win.is_symbolic
    if constant_window:
        w = win.numeric().astype(np.float64).reshape(-1, 1)
        cos, sin = cos * w, sin * w
    index = relax.const((np.arange(frames)[:, None] * step + n[None, :]).astype(np.int64))  # [F, L]

    def framed(part: int) -> relax.Expr:
        x = ctx.emit(op.reshape(op.strided_slice(signal, axes=[2], begin=[part], end=[part + 1]), [dims[0], length]))
        f = ctx.emit(op.take(x, index, axis=1, mode="clip"))  # [B, F, L] (in bounds: "clip" only quiets TVM)
        if window is not None and not constant_window:
            f = ctx.emit(op.multiply(f, op.reshape(op.astype(window, dtype), [1, 1, size])))
        return f

    def matmul(x: relax.Expr, basis: np.ndarray) -> relax.Expr:
        return ctx.emit(op.matmul(x, relax.const(basis.astype(dtype))))

    real_frames = framed(0)
    if parts == 1:
        out = matmul(real_frames, np.concatenate([cos, -sin], axis=1))  # [B, F, 2K]
    elif parts == 2:
        imag_frames = framed(1)
        # (a + ib)(cos - i sin) = (a cos + b sin) + i (b cos - a sin)
        out = ctx.emit(op.add(matmul(real_frames, np.concatenate([cos, -sin], axis=1)),
                              matmul(imag_frames, np.concatenate([sin, cos], axis=1))))
    else:
        raise LoweringError(f"STFT's signal has {parts} values per sample; 1 (real) or 2 (complex) expected")
    out = ctx.emit(op.reshape(out, [dims[0], frames, 2, bins]))
    return op.permute_dims(out, [0, 1, 3, 2])


def DFT(ctx, x, dft_length=None, axis_input=None, *, axis=1, inverse=0, onesided=0):
    dims = shape_of(x)
    rank = len(dims)
    if rank < 2 or not all(isinstance(d, int) for d in dims):
        raise LoweringError("DFT needs a static input shape")
    if ctx.opset >= 20:
        given = ctx.static(2, "DFT's axis")
        axis = -2 if given is None else int(given.reshape(-1)[0])
    axis = axis + rank if axis < 0 else axis
    parts = dims[-1]
    if not 0 <= axis < rank - 1 or parts not in (1, 2):
        raise LoweringError(f"DFT along axis {axis} of a {dims} input (last axis: 1 real or 2 complex values)")
    if inverse and onesided:
        raise LoweringError("DFT with inverse=1 and onesided=1 is not supported")
    n_in = dims[axis]
    size = n_in if dft_length is None else int(ctx.static(1, "DFT's dft_length").reshape(-1)[0])
    if size <= 0:
        raise LoweringError(f"DFT length {size}")
    bins = size // 2 + 1 if onesided else size
    dtype = dtype_of(x)
    # The signal axis second to last, the complex axis last; cut or zero-padded to the length.
    order = [d for d in range(rank - 1) if d != axis] + [axis, rank - 1]
    xt = ctx.emit(op.permute_dims(x, order))
    rest = [dims[d] for d in order[:-2]]
    if size < n_in:
        xt = ctx.emit(op.strided_slice(xt, axes=[rank - 2], begin=[0], end=[size]))
    elif size > n_in:
        xt = ctx.emit(op.nn.pad(xt, [0, 0] * (rank - 2) + [0, size - n_in, 0, 0]))
    angle = 2 * np.pi * np.outer(np.arange(size), np.arange(bins)) / size  # [N, K]
    cos, sin = np.cos(angle), np.sin(angle)
    sign = 1.0 if inverse else -1.0  # e^{-i} forward, e^{+i} inverse
    scale = 1.0 / size if inverse else 1.0
    # (a + ib)(cos + i sign sin) = (a cos - sign b sin) + i (sign a sin + b cos)
    bases = [np.concatenate([cos, sign * sin], axis=1) * scale]
    if parts == 2:
        bases.append(np.concatenate([-sign * sin, cos], axis=1) * scale)
    out = None
    for part, basis in enumerate(bases):
        xp = op.reshape(op.strided_slice(xt, axes=[rank - 1], begin=[part], end=[part + 1]), rest + [size])
        term = ctx.emit(op.matmul(ctx.emit(xp), relax.const(basis.astype(dtype))))
        out = term if out is None else ctx.emit(op.add(out, term))
    out = ctx.emit(op.permute_dims(op.reshape(out, rest + [2, bins]), list(range(rank - 2)) + [rank - 1, rank - 2]))
    back = [order.index(d) for d in range(rank)]  # [rest..., K, 2] back to the input's axis order
    return op.permute_dims(out, back)


CONVERTERS = {"STFT": STFT, "DFT": DFT}
