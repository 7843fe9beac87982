"""Integer kernels: uint8 x int8 -> int32 matmul and NHWC convolution, and their CPU schedule.

The quantized converters (:mod:`lepton_opt.targets.ops.quant`) bring every heavy op of a QDQ
model to one of two TE computes defined here, with the weight packed at build time into the
layout x86's dot-product instructions read:

* ``lepton_int8_dense``: ``C[m, no, ni] = sum_k X[m, k] * W[no, k // 4, ni, k % 4]``
* ``lepton_int8_conv``: the same over ``(kh, kw, ci)`` with NHWC data and weights packed as
  ``[co // 16, kh, kw, ci // 4, co % 16, ci % 4]``.

``X`` is uint8 and ``W`` int8: VNNI's ``vpdpbusd`` multiplies 4 unsigned bytes of the data
(broadcast) with 16 x 4 signed bytes of the weight and adds the 16 int32 sums to an accumulator
in one instruction (64 multiply-adds; a float32 FMA does 16). Signed activations are shifted
by +128 into uint8 before the kernel and the shift is taken back with a per-channel constant
(see ``quant.py``), so one kernel serves int8 and uint8 data.

The CPU schedule of those blocks is :func:`lepton_opt.targets.cpu_schedule._rule_int8`: a
register tile of ``rows x u`` accumulator vectors (16 int32 lanes each) kept in a local buffer,
the reduction loops outside it, the ``16 x 4`` dot product tensorized to ``vpdpbusd``
(:data:`VNNI_INTRIN`) where the target has AVX512-VNNI (else vectorized int32 arithmetic), the
fused epilogue (requantization) computed per tile and the outer tiles run in parallel.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import te
from tvm.s_tir import TensorIntrin
from tvm.script import tirx as T

LANES = 16  # int32 accumulators per vector (one zmm)
GROUP = 4  # bytes of the reduction axis per 32-bit lane
BLOCK_PREFIX = "lepton_int8_"


# ----------------------------------------------------------------------------------------
# The VNNI dot product: 4 uint8 (broadcast) x 16x4 int8 -> 16 int32, accumulated in registers
# ----------------------------------------------------------------------------------------
# TVM ships an equivalent intrinsic (tensor_intrin.x86), written for a global accumulator and
# the older LLVM signature of vpdpbusd (i32 vectors); LLVM 20 takes byte vectors.

@T.prim_func(s_tir=True)
def _dot_16x4_desc(
    A: T.Buffer((4,), "uint8", offset_factor=1),
    B: T.Buffer((16, 4), "int8", offset_factor=1),
    C: T.Buffer((16,), "int32", offset_factor=1, scope="local"),
) -> None:
    with T.sblock("root"):
        T.reads(C[0:16], A[0:4], B[0:16, 0:4])
        T.writes(C[0:16])
        for i in T.serial(0, 16):
            for k in T.serial(0, 4):
                with T.sblock("update"):
                    vi, vk = T.axis.remap("SR", [i, k])
                    C[vi] = C[vi] + T.cast(A[vk], "int32") * T.cast(B[vi, vk], "int32")


@T.prim_func(s_tir=True)
def _dot_16x4_vnni(
    A: T.Buffer((4,), "uint8", offset_factor=1),
    B: T.Buffer((16, 4), "int8", offset_factor=1),
    C: T.Buffer((16,), "int32", offset_factor=1, scope="local"),
) -> None:
    with T.sblock("root"):
        T.reads(C[0:16], A[0:4], B[0:16, 0:4])
        T.writes(C[0:16])
        a = T.reinterpret(T.broadcast(T.reinterpret(A.vload([0], "uint8x4"), dtype="int32"), 16), dtype="int8x64")
        C[T.ramp(T.int32(0), 1, 16)] = T.call_llvm_pure_intrin(
            "int32x16", "llvm.x86.avx512.vpdpbusd.512",
            C.vload([0], dtype="int32x16"), a, B.vload([0, 0], dtype="int8x64"),
        )


VNNI_INTRIN = "lepton_vnni_dot_16x4"
TensorIntrin.register(VNNI_INTRIN, _dot_16x4_desc, _dot_16x4_vnni, override=True)


def has_vnni(target: tvm.target.Target) -> bool:
    if target.kind.name != "llvm":
        return False
    try:
        return bool(tvm.target.codegen.target_has_features("avx512vnni", target))
    except Exception:  # noqa: BLE001 - an LLVM that cannot answer: do not use the instruction
        return False


# ----------------------------------------------------------------------------------------
# Weight packing (numpy, at build time)
# ----------------------------------------------------------------------------------------

def pad_to(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def pack_dense(w_nk: np.ndarray) -> np.ndarray:
    """int8 ``[N, K]`` -> ``[N/16, K/4, 16, 4]``, zero-padded to whole groups."""
    n, k = w_nk.shape
    np_, kp = pad_to(n, LANES), pad_to(k, GROUP)
    full = np.zeros((np_, kp), np.int8)
    full[:n, :k] = w_nk
    return np.ascontiguousarray(full.reshape(np_ // LANES, LANES, kp // GROUP, GROUP).transpose(0, 2, 1, 3))


def pack_conv(w_oihw: np.ndarray) -> np.ndarray:
    """int8 ``[CO, CI, KH, KW]`` -> ``[CO/16, KH, KW, CI/4, 16, 4]``, zero-padded."""
    co, ci, kh, kw = w_oihw.shape
    cop, cip = pad_to(co, LANES), pad_to(ci, GROUP)
    full = np.zeros((cop, cip, kh, kw), np.int8)
    full[:co, :ci] = w_oihw
    blocks = full.reshape(cop // LANES, LANES, cip // GROUP, GROUP, kh, kw)
    return np.ascontiguousarray(blocks.transpose(0, 4, 5, 2, 1, 3))


# ----------------------------------------------------------------------------------------
# TE computes
# ----------------------------------------------------------------------------------------

def dense_compute(x: te.Tensor, w: te.Tensor) -> te.Tensor:
    """``x`` uint8 ``[..., M, Kp]``, ``w`` packed int8 ``[Np/16, Kp/4, 16, 4]`` -> int32
    ``[..., M, Np]``.

    The output keeps the leading dims (a dynamic batch stays an outer loop; the rows stay
    static) and is not reshaped after, so that the elementwise epilogue that follows fuses
    into the kernel: TVM fuses a reduction only with elementwise and broadcast consumers.
    """
    kp = x.shape[-1]
    ko = te.reduce_axis((0, kp // GROUP), "ko")
    ki = te.reduce_axis((0, GROUP), "ki")
    return te.compute(
        (*x.shape[:-1], w.shape[0] * LANES),
        lambda *i: te.sum(
            x[(*i[:-1], ko * GROUP + ki)].astype("int32") * w[i[-1] // LANES, ko, i[-1] % LANES, ki].astype("int32"),
            axis=[ko, ki],
        ),
        name=BLOCK_PREFIX + "dense",
    )


def conv_compute(x: te.Tensor, w: te.Tensor, strides, dilations) -> te.Tensor:
    """``x`` uint8 NHWC (already padded), ``w`` packed -> int32 NHWC ``[N, OH, OW, COp]``."""
    n = x.shape[0]  # may be symbolic (a dynamic batch)
    hp, wp = int(x.shape[1]), int(x.shape[2])
    cob, kh_, kw_, cib, _, _ = (int(d) for d in w.shape)
    sh, sw = strides
    dh, dw = dilations
    oh = (hp - (kh_ - 1) * dh - 1) // sh + 1
    ow = (wp - (kw_ - 1) * dw - 1) // sw + 1
    kh = te.reduce_axis((0, kh_), "kh")
    kw = te.reduce_axis((0, kw_), "kw")
    cio = te.reduce_axis((0, cib), "cio")
    cii = te.reduce_axis((0, GROUP), "cii")
    return te.compute(
        (n, oh, ow, cob * LANES),
        lambda b, y, xx, co: te.sum(
            x[b, y * sh + kh * dh, xx * sw + kw * dw, cio * GROUP + cii].astype("int32")
            * w[co // LANES, kh, kw, cio, co % LANES, cii].astype("int32"),
            axis=[kh, kw, cio, cii],
        ),
        name=BLOCK_PREFIX + "conv",
    )
