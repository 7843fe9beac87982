"""Winograd F(2x2, 3x3): 3x3 stride-1 convolutions with 2.25x fewer multiplications (CPU).

A 3x3 convolution producing 2x2 outputs from a 4x4 input tile needs 36 multiply-adds per
channel pair; Winograd's minimal filtering (Lavin & Gray 2016) needs 16, after transforming
the tile (``B^T d B``), the weight (``G g G^T``, at build time) and the result (``A^T m A``)
with matrices of 0, +-1 and 1/2, so the float32 rounding is that of the direct convolution's
order of magnitude (F(4x4, 3x3) would save 4x, with constants up to 8 and visibly larger error).

The rewrite (:func:`winograd_pass`, NHWC convolutions with a constant HWIO weight):

1. pad the input so that the output is whole 2x2 tiles;
2. ``V[k, p, c]`` (``k`` = one of the 16 tile positions, ``p`` = tile) = ``B^T d B``;
3. ``M[k] = V[k] @ U[k]``: 16 batched matmuls of ``tiles x C_in`` by ``C_in x C_out``, on the
   register-tiled, weight-packed matmul kernel (``U``, the transformed weight, is a constant);
4. ``Y = A^T m A``, cropped to the output size, with the convolution's epilogue (bias, activation)
   fused in.

The transforms are written with ``Select`` on the tile position; their schedule
(:func:`lepton_opt.targets.cpu_schedule._rule_winograd`) unrolls the positions so that the
selects fold away and each position becomes its few adds, vectorized over channels.

Measured (3x3 convolution + ReLU from ONNX, 2 threads, against the direct register-tiled
kernel, interleaved in one run): 56x56x64 1.47x, 28x28x128 1.45x, 14x14x256 1.84x, 7x7x512
1.45x, 40x40x32 1.27x; with 16 input channels nothing is gained (1.00x), so those stay direct.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax, te, tirx

from lepton_opt.targets.lower import mutator_pass

IN_BLOCK = "lepton_winograd_in"
OUT_BLOCK = "lepton_winograd_out"
LANES = 16
# Measured (3x3 conv + ReLU, 2 threads, Winograd against the direct kernel in one run): 16 input
# channels 1.00x (80x80), 32 1.27x (40x40), 64 1.43x-1.47x, 128 1.39x-1.45x, 256 1.84x, 512 1.45x.
MIN_CHANNELS = 32
TILE = 2  # outputs per tile side
POSITIONS = 16  # (TILE + 2) ** 2

_G = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]])


def weight_transform(w_hwio: np.ndarray) -> np.ndarray:
    """``[3, 3, C_in, C_out]`` -> ``U`` ``[16, C_in, C_out]`` (``G g G^T``, float64 then float32)."""
    u = np.einsum("ei,ijco,nj->enco", _G, w_hwio.astype(np.float64), _G)
    return u.reshape(POSITIONS, *w_hwio.shape[2:]).astype(w_hwio.dtype)


def _b_rows(k, a0, a1, a2, a3):
    """Row ``k`` of ``B^T`` applied to (a0..a3): d0 - d2, d1 + d2, d2 - d1, d1 - d3."""
    return tirx.Select(k == 0, a0 - a2, tirx.Select(k == 1, a1 + a2, tirx.Select(k == 2, a2 - a1, a1 - a3)))


def _a_rows(k, a0, a1, a2, a3):
    """Row ``k`` of ``A^T`` applied to (a0..a3): m0 + m1 + m2, m1 - m2 - m3."""
    return tirx.Select(k == 0, a0 + a1 + a2, a1 - a2 - a3)


def input_transform(padded: te.Tensor, tiles_h: int, tiles_w: int) -> te.Tensor:
    """NHWC padded input -> ``V`` ``[16, N * tiles_h * tiles_w, C]``."""
    batch, _, _, channels = (int(d) for d in padded.shape)
    per_image = tiles_h * tiles_w

    def value(k, p, c):
        b, t = p // per_image, p % per_image
        y, x = TILE * (t // tiles_w), TILE * (t % tiles_w)
        d = [[padded[b, y + i, x + j, c] for j in range(4)] for i in range(4)]
        rows = [_b_rows(k // 4, d[0][j], d[1][j], d[2][j], d[3][j]) for j in range(4)]
        return _b_rows(k % 4, *rows)

    return te.compute((POSITIONS, batch * per_image, channels), value, name=IN_BLOCK)


def output_transform(m: te.Tensor, batch: int, out_h: int, out_w: int, tiles_h: int, tiles_w: int) -> te.Tensor:
    """``M`` ``[16, tiles, C_out]`` -> NHWC ``[N, out_h, out_w, C_out]``."""
    per_image = tiles_h * tiles_w

    def value(b, y, x, o):
        p = b * per_image + (y // TILE) * tiles_w + x // TILE
        rows = [_a_rows(y % TILE, m[n, p, o], m[4 + n, p, o], m[8 + n, p, o], m[12 + n, p, o]) for n in range(4)]
        return _a_rows(x % TILE, *rows)

    return te.compute((batch, out_h, out_w, int(m.shape[2])), value, name=OUT_BLOCK)


def _constant(mutator: relax.PyExprMutator, expr) -> np.ndarray | None:
    """The value of a constant weight: a constant, or the layout conversion's transpose of one."""
    if isinstance(expr, relax.Var):
        bound = mutator.lookup_binding(expr)
        expr = bound if bound is not None else expr
    if isinstance(expr, tvm.ir.Constant):
        return expr.value.numpy()
    if isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op) and expr.op.name == "relax.permute_dims":
        inner = _constant(mutator, expr.args[0])
        if inner is not None:
            axes = None if expr.attrs.axes is None else [int(a) for a in expr.attrs.axes]
            return np.transpose(inner, axes)
    return None


def _applies(call: relax.Call, mutator: relax.PyExprMutator) -> np.ndarray | None:
    """The HWIO weight of a convolution the rewrite takes, or None."""
    attrs = call.attrs
    if attrs.data_layout != "NHWC" or attrs.kernel_layout != "HWIO" or int(attrs.groups) != 1:
        return None
    if [int(s) for s in attrs.strides] != [1, 1] or [int(d) for d in attrs.dilation] != [1, 1]:
        return None
    if attrs.out_dtype is not None and str(attrs.out_dtype) not in ("", "float32", "void"):
        return None
    data = call.args[0]
    shape = getattr(getattr(data, "ty", None), "shape", None)
    if shape is None or not all(isinstance(d, tirx.IntImm) for d in shape.values) or str(data.ty.dtype) != "float32":
        return None
    w = _constant(mutator, call.args[1])
    if w is None or w.dtype != np.float32 or w.ndim != 4 or w.shape[:2] != (3, 3) or w.shape[3] % LANES or w.shape[2] < MIN_CHANNELS:
        return None
    return w


@relax.expr_functor.mutator
class _Winograd(relax.PyExprMutator):
    def visit_call_(self, call: relax.Call) -> relax.Expr:  # noqa: D401
        call = super().visit_call_(call)
        if not (isinstance(call.op, tvm.ir.Op) and call.op.name == "relax.nn.conv2d"):
            return call
        w = _applies(call, self)
        if w is None:
            return call
        batch, height, width, _ = (int(d) for d in call.args[0].ty.shape.values)
        top, left, bottom, right = (int(p) for p in call.attrs.padding)
        out_h, out_w = height + top + bottom - 2, width + left + right - 2
        tiles_h, tiles_w = -(-out_h // TILE), -(-out_w // TILE)
        pad = [0, 0, top, TILE * tiles_h + 2 - height - top, left, TILE * tiles_w + 2 - width - left, 0, 0]
        padded = self.builder_.emit(relax.op.nn.pad(call.args[0], pad))
        v = self.builder_.emit_te(input_transform, padded, tiles_h, tiles_w, primfunc_name_hint="winograd_input")
        m = self.builder_.emit(relax.op.matmul(v, relax.const(weight_transform(w))))
        return self.builder_.call_te(output_transform, m, batch, out_h, out_w, tiles_h, tiles_w,
                                     primfunc_name_hint="winograd_output")


# 3x3 stride-1 NHWC convolutions with a constant weight -> Winograd F(2x2, 3x3).
winograd_pass = mutator_pass("LeptonWinograd", _Winograd)
