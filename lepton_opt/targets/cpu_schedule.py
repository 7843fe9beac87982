"""Default (untuned) CPU schedules for the Relax CPU pipeline.

TVM's stock CPU pipeline legalizes every Relax op into a TIR ``PrimFunc`` and fuses them, but
never schedules them: each loop nest stays scalar and single-threaded, 3x-100x slower than
onnxruntime. This module gives every unscheduled ``PrimFunc`` a rule-based schedule, with no
measurement, so a user who never tunes still gets usable latency.

Design, and why:

* **Graph level first** (:func:`cpu_graph_passes`). Convolutions are converted to NHWC data
  and HWIO weights (3-D ones to NDHWC/DHWIO). In NHWC the output channel is the innermost, contiguous axis of both the
  output and the (constant-folded) weight, so one rule vectorizes 1x1, 3x3, strided and
  depthwise convolutions alike over channels, whatever the spatial size (7x7 and 14x14 maps do
  not split into 16 lanes, channel counts do). Scalar 0-d constants in binary ops (``Clip``
  imported as maximum/minimum) are reshaped to rank 4 beforehand, because layout inference
  gives up on 0-d operands and would wrap every ReLU6 in a pair of transposes. Transposed
  convolutions whose kernel equals their stride become 1x1 convolutions and a depth-to-space
  reshuffle first (:class:`_NonOverlappingConvTranspose`). Afterwards convolutions are shaped
  for the micro-kernel below: grouped ones split per group (:class:`_SplitGroupedConv`), output
  channel counts that are not whole vectors (and fewer than 4) padded to ones that tile well,
  depthwise ones too, and output widths that tile badly (a prime longer than the tile) computed
  a few columns wider (:class:`_PadConvChannels`); the extra channels and columns are sliced
  off in the kernel's epilogue. Matmuls with a constant weight whose rows are counted at run
  time (a detector's box head after NMS, a dynamic batch) get their rows padded to whole
  register tiles (:class:`_PadRuntimeRows`).
* **Register-tiled reductions** (:func:`_rule_tiled_reduction`): one rule for every function
  whose main block is a reduction whose output's innermost axis is a spatial iterator read
  contiguously (or not at all) by every input: dense/batch matmul with constant weights,
  NHWC convolutions of all kinds, pooling and the NHWC global average pool. It builds a
  micro-kernel of ``rows x (u * lanes)`` accumulators (kept in a "local" buffer that LLVM
  promotes to vector registers once unrolled), puts every reduction loop outside the
  micro-kernel so each input element loaded is reused ``rows`` or ``u * lanes`` times, and
  runs the fused outer tile loops in parallel. Tile sizes are picked from divisors of the
  extents so no tail predicate blocks vectorization. Injective epilogues (bias, ReLU6,
  residual add, GELU) are computed per tile while the tile is hot in cache.
  Constant weights are repacked at build time to ``[N / lanes, ..., lanes]`` (TVM's
  layout-rewrite prepack, folded into the constant), so the micro-kernel streams them
  contiguously. A row extent known only at run time is allowed when it is a whole number of
  row tiles (padded in the graph, or in the kernel as a last resort); those row tiles stay a
  loop of their own, so the accumulators keep fixed registers.
* **Winograd** (:func:`_rule_winograd`, graph rewrite in :mod:`.winograd`): 3x3 stride-1 NHWC
  convolutions with constant weights and at least 32 input channels run as F(2x2, 3x3): an
  input transform, one batched matmul against the pre-transformed weights (scheduled like any
  register-tiled reduction), and an output transform that carries the epilogue.
* **Fused attention** (:func:`_rule_attention`, compute in :mod:`.attention`): one function per
  attention block: per (batch, head) and block of 4-8 query rows, the scores, row maxima,
  ``exp``, row sums and the product with V are computed while the block's ``rows x keys``
  scores stay in cache, so the whole ``[B, H, S, L]`` score tensor is never materialized.
* **Row reductions** (softmax, layer norm, mean over the last axis): a vectorized rule that
  splits each row reduction across vector lanes (:func:`_rule_rows`), then dlight's CPU
  ``Reduction`` rule (parallel rows, all blocks computed per row, injective blocks vectorized).
  Softmax, sigmoid and tanh are rewritten beforehand to TVM's vectorizable fast forms
  (``fast_softmax``, ``fast_exp``, ``fast_tanh``; within a relative 2e-6 of the exact functions
  in the tests), float16/bfloat16 computed in float32.
* **Channel reductions** (:func:`_rule_channel_reduction`): reductions over outer axes of a
  channels-last tensor (instance norm and global pooling over NHWC's H and W) walk the reduced
  axes with vectors of channels as partial results, each reduction computed once.
* **Everything else** (:func:`_rule_generic`): injective blocks are inlined where possible;
  every remaining block gets its outer spatial loops fused and parallelized and its innermost
  spatial loop vectorized. This is also the fallback when a richer rule fails, so no function
  is left scalar and single-threaded, and a rule failure never fails the build.

Every schedule primitive is checked by TVM for legality, and each rule runs on a fresh
``Schedule``: a rule that raises leaves the function to the next rule, and the last resort is
the unscheduled function (correct, just slow).
"""

from __future__ import annotations

import dataclasses
import logging
import re

import numpy as np
import tvm
import tvm_ffi
from tvm import relax, s_tir, te, tirx, topi
from tvm.relax.backend.cpu_generic import pipeline as _cpu_pipeline
from tvm.sym import Analyzer
from tvm.s_tir.dlight.cpu import Reduction as _DlightReduction

from lepton_opt.errors import first_line
from lepton_opt.targets import attention as _attention
from lepton_opt.targets import int8 as _int8
from lepton_opt.targets import winograd as _winograd
from lepton_opt.targets.lower import mutator_pass as _mutator_pass

logger = logging.getLogger(__name__)

# The register tile of a micro-kernel: at most _MAX_ROWS rows by _MAX_U vectors, and as many
# accumulator vectors as the vector register file holds beside the broadcast operand and the
# weight vectors (:func:`_max_accumulators`). Measured on a 56x56x64 3x3 NHWC convolution
# (AVX-512): 8 rows x 4 vectors (32 accumulators, spilling) 259 GFLOP/s, 8 x 3 414, 14 x 2 453.
_MAX_ROWS = 14
_MAX_U = 4
# Rows are padded to a multiple of this when the row count has no useful divisor (197 tokens).
_ROW_PAD = 8
# Stands for a row extent known only at run time when the row tile is chosen: 2^4 * 3^2 * 5 *
# 7 * 11 * 13, which every row tile divides.
_RUNTIME_ROWS = 720720


# ----------------------------------------------------------------------------------------
# Target facts
# ----------------------------------------------------------------------------------------

def _vector_bits(target: tvm.target.Target) -> int:
    try:
        from tvm.target.codegen import llvm_get_vector_width

        bits = int(llvm_get_vector_width(target))
    except Exception:  # noqa: BLE001 - a non-LLVM or unknown CPU: assume SSE width
        bits = 0
    return bits if bits > 0 else 128


def _lanes(target: tvm.target.Target, dtype_bits: int) -> int:
    return max(_vector_bits(target) // max(dtype_bits, 8), 1)


def _vector_registers(target: tvm.target.Target) -> int:
    """Vector registers of the target: 32 with AVX-512, 16 with AVX2/SSE."""
    return 32 if _vector_bits(target) >= 512 else 16


# ----------------------------------------------------------------------------------------
# Graph-level passes
# ----------------------------------------------------------------------------------------

_BINARY_OPS = {
    "relax.add", "relax.subtract", "relax.multiply", "relax.divide", "relax.maximum",
    "relax.minimum", "relax.power",
}


@relax.expr_functor.mutator
class _ScalarConstToRank(relax.PyExprMutator):
    """Reshape 0-d constant operands of binary ops to the other operand's rank."""

    def visit_call_(self, call: relax.Call) -> relax.Expr:  # noqa: D401
        call = super().visit_call_(call)
        if not isinstance(call.op, tvm.ir.Op) or call.op.name not in _BINARY_OPS:
            return call
        if len(call.args) != 2:
            return call
        args = list(call.args)
        changed = False
        for i, (a, b) in enumerate([(args[0], args[1]), (args[1], args[0])]):
            if isinstance(a, relax.Var):
                # A scalar bound to a variable (importers often name their constants).
                bound = self.lookup_binding(a)
                a = bound if bound is not None else a
            ty = getattr(b, "ty", None)
            if (
                isinstance(a, tvm.ir.Constant)
                and isinstance(getattr(a, "value", None), tvm.runtime.Tensor)
                and len(a.value.shape) == 0
                and isinstance(ty, relax.TensorType)
                and ty.ndim >= 3
            ):
                arr = a.value.numpy().reshape((1,) * ty.ndim)
                args[i] = relax.const(arr, str(arr.dtype))
                changed = True
        if not changed:
            return call
        return getattr(relax.op, call.op.name.split(".")[-1])(*args)


_scalar_const_to_rank = _mutator_pass("LeptonScalarConstToRank", _ScalarConstToRank)


@relax.expr_functor.mutator
class _NanKeepingRelu(relax.PyExprMutator):
    """``relu(x)`` as ``maximum(0, x)``: TVM computes ``max(a, b)`` as ``a >= b ? a : b``, so
    relu's ``max(x, 0)`` turns a NaN into 0 where onnxruntime's Relu passes it on (and a NaN
    would then hide from ``--verify``); with the operands swapped the NaN stays. Runs after the
    layout conversion, which places relu with its convolution and would not place the swapped
    form (a constant first operand)."""

    def visit_call_(self, call: relax.Call) -> relax.Expr:  # noqa: D401
        call = super().visit_call_(call)
        if not (isinstance(call.op, tvm.ir.Op) and call.op.name == "relax.nn.relu"):
            return call
        ty = getattr(call.args[0], "ty", None)
        if not isinstance(ty, relax.TensorType) or ty.ndim < 0 or not str(ty.dtype).startswith(("float", "bfloat")):
            return call
        zero = relax.const(np.zeros((1,) * ty.ndim, str(ty.dtype)), str(ty.dtype))
        return relax.op.maximum(zero, call.args[0])


_nan_keeping_relu = _mutator_pass("LeptonNanKeepingRelu", _NanKeepingRelu)


@tvm.transform.module_pass(opt_level=0, name="LeptonConvertConvLayout")
def _convert_conv_layout(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
    """NHWC/HWIO (NDHWC/DHWIO) convolutions, whose output channels are the innermost axis that
    the register-tiled rule vectorizes; skipped when there is no conv2d, because ConvertLayout's cost
    grows quadratically with the number of bindings (an LSTM unrolled over 400 steps spent five
    minutes in it)."""
    convs = [tvm.ir.Op.get("relax.nn.conv2d"), tvm.ir.Op.get("relax.nn.conv3d")]
    found = []

    def visit(expr):
        if isinstance(expr, relax.Call) and any(expr.op.same_as(op) for op in convs):
            found.append(expr)

    for func in mod.functions.values():
        if isinstance(func, relax.Function) and not found:
            relax.analysis.post_order_visit(func, visit)
    if not found:
        return mod
    # Transposed convolutions are pinned to NCHW: layout propagation would otherwise hand them the
    # NHWC of a neighbouring conv2d, which TVM cannot legalize for conv2d_transpose.
    return relax.transform.ConvertLayout({"relax.nn.conv2d": ["NHWC", "HWIO"],
                                          "relax.nn.conv3d": ["NDHWC", "DHWIO"],
                                          "relax.nn.conv2d_transpose": ["NCHW", "IOHW"]})(mod)


@relax.expr_functor.mutator
class _PadConvChannels(relax.PyExprMutator):
    """NHWC convolutions whose output channel count is not a whole number of vectors (and is
    longer than one): zero output channels are added to the weight up to a multiple of
    ``lanes`` and the result is sliced back (the slice fuses into the kernel's epilogue). The
    channel axis is the vector axis of the convolution's micro-kernel (see
    :func:`_rule_tiled_reduction`), and without this it runs with the largest vector width that
    divides the count: scalar for 179 or 45 (a ResNet-50 pruned to such counts ran 3.6x slower
    than unpruned), 4 lanes for ShuffleNetV2's 116 (29 FMAs per pixel where 8 padded ones do).
    Fewer than 4 channels are padded to a whole vector too: one output channel left the kernel to
    the row-reduction rule, a scalar dot-product chain per pixel (basic-pitch's 1-channel heads:
    48 -> 13 ms of kernel time over the model, 16x the multiplications notwithstanding).
    Depthwise convolutions get zero channels on data and weight alike
    (:meth:`_padded_depthwise`). Convolutions are not einsums, so ``pad_einsum`` cannot do it."""

    def __init__(self, mod: tvm.IRModule, lanes: int, registers: int = 32):
        super().__init__(mod)
        self.lanes = lanes
        self.registers = registers

    def visit_call_(self, call: relax.Call) -> relax.Expr:  # noqa: D401
        call = super().visit_call_(call)
        if not (isinstance(call.op, tvm.ir.Op) and call.op.name == "relax.nn.conv2d"):
            return call
        attrs = call.attrs
        if attrs.data_layout != "NHWC" or attrs.kernel_layout != "HWIO":
            return call
        weight_ty = getattr(call.args[1], "ty", None)
        shape = getattr(weight_ty, "shape", None)
        if shape is None or not all(isinstance(d, tirx.IntImm) for d in shape.values):
            return call
        out_channels, groups = int(shape.values[3]), int(attrs.groups)
        if groups == 1:
            out_shape = getattr(call.ty, "shape", None)
            rows = out_shape.values[2] if out_shape is not None else None
            rows = int(rows) if isinstance(rows, tirx.IntImm) else None
            pad_channels = not (out_channels % self.lanes == 0 or 4 <= out_channels <= self.lanes)
            width = (_tile_friendly_width(out_channels, self.lanes, rows, self.registers) if rows else None) \
                if pad_channels else out_channels
            wide_rows = rows
            if rows and width and width % self.lanes == 0:
                wide_rows = _tile_friendly_rows(rows, width // self.lanes, self.registers)
            if wide_rows != rows:
                a = call.attrs
                top, left, bottom, right = (int(p) for p in a.padding)
                call = self.builder_.normalize(relax.op.nn.conv2d(
                    call.args[0], call.args[1], strides=a.strides, dilation=a.dilation, groups=1,
                    padding=[top, left, bottom, right + (wide_rows - rows) * int(a.strides[1])],
                    data_layout="NHWC", kernel_layout="HWIO", out_layout=a.out_layout, out_dtype=a.out_dtype))
            out = call
            if pad_channels:
                out = self.builder_.emit(
                    _with_padded_weight(self.builder_, call, out_channels, self.lanes, out_axis=3, padded=width))
            if wide_rows != rows:
                out = relax.op.strided_slice(self.builder_.emit(out) if out is call else out,
                                             axes=[2], begin=[0], end=[rows])
            return out
        if groups == out_channels and int(shape.values[2]) == 1 and out_channels % self.lanes and out_channels > self.lanes:
            return self._padded_depthwise(call, out_channels)
        return call

    def _padded_depthwise(self, call: relax.Call, channels: int) -> relax.Expr:
        """A depthwise convolution over a channel count that is not a whole number of vectors
        (ShuffleNetV2's 58 and 116, MobileNets' 72 and 120): data and weight get zero channels
        up to whole vectors (the data's padding fuses into the kernel's own), the result is
        sliced back. Its vector axis is the channel axis, and 58 channels ran scalar: 14x
        slower per element than 64."""
        data, weight = call.args[0], call.args[1]
        padded = -(-channels // self.lanes) * self.lanes
        extra = padded - channels
        wide_data = self.builder_.emit(relax.op.nn.pad(data, [0, 0, 0, 0, 0, 0, 0, extra]))
        wide_weight = relax.op.nn.pad(weight, [0, 0, 0, 0, 0, 0, 0, extra])
        a = call.attrs
        out = self.builder_.emit(relax.op.nn.conv2d(
            wide_data, wide_weight, strides=a.strides, padding=a.padding, dilation=a.dilation, groups=padded,
            data_layout="NHWC", kernel_layout="HWIO", out_layout=a.out_layout, out_dtype=a.out_dtype))
        return relax.op.strided_slice(out, axes=[3], begin=[0], end=[channels])


def _with_padded_weight(builder: relax.BlockBuilder, call: relax.Call, width: int, lanes: int,
                        out_axis: int, padded: int | None = None) -> relax.Expr:
    """``call`` (a conv2d or matmul) with its weight's last axis zero-padded from ``width`` to
    ``padded`` (default: the next multiple of ``lanes``), the result sliced back to ``width``
    along ``out_axis``."""
    weight = call.args[1]
    rank = len(weight.ty.shape.values)
    padded = padded or -(-width // lanes) * lanes
    wide = relax.op.nn.pad(weight, [0] * (2 * rank - 1) + [padded - width])
    out = builder.emit(relax.Call(call.op, [call.args[0], wide, *call.args[2:]], call.attrs))
    return relax.op.strided_slice(out, axes=[out_axis], begin=[0], end=[width])


_WIDENED_OPS = frozenset({"relax.matmul", "relax.nn.conv1d", "relax.nn.conv2d", "relax.nn.conv3d",
                          "relax.nn.conv1d_transpose", "relax.nn.conv2d_transpose"})


@relax.expr_functor.mutator
class _WidenLowPrecision(relax.PyExprMutator):
    """float16/bfloat16 matmuls and convolutions that accumulate in float32 read float32 copies of
    their operands (constant weights are folded to float32 at build time). CPUs without
    float16/bfloat16 arithmetic would otherwise convert every element inside the micro-kernel,
    once per reuse; converting once per tensor keeps the float32 kernels' speed. Low precision
    remains the storage format of the activations between these ops."""

    def visit_call_(self, call: relax.Call) -> relax.Expr:  # noqa: D401
        call = super().visit_call_(call)
        if not (isinstance(call.op, tvm.ir.Op) and call.op.name in _WIDENED_OPS):
            return call
        if str(getattr(call.attrs, "out_dtype", "")) != "float32":
            return call
        dtypes = [str(getattr(getattr(a, "ty", None), "dtype", "")) for a in call.args[:2]]
        if not any(d in ("float16", "bfloat16") for d in dtypes):
            return call
        args = [relax.op.astype(a, "float32") if d in ("float16", "bfloat16") else a
                for a, d in zip(call.args[:2], dtypes)] + list(call.args[2:])
        return relax.Call(call.op, args, call.attrs, call.ty_args)


_widen_low_precision = _mutator_pass("LeptonWidenLowPrecision", _WidenLowPrecision)


@relax.expr_functor.mutator
class _VectorizableNonlinear(relax.PyExprMutator):
    """Softmax, sigmoid and tanh computed with TVM's vectorizable polynomial exp and rational
    tanh (``topi.fast_exp``, ``topi.fast_tanh``: within 3.1e-7 relative error of float64 over
    [-88, 88] and [-10, 10], measured) instead of a scalar libm call per element: LLVM cannot
    vectorize ``expf``. float16/bfloat16 tensors are computed in float32 and rounded once (the
    SiLUs of an fp16 CNN otherwise call ``expf`` per element). Exp itself stays exact (overflow
    to inf is its contract)."""

    def visit_call_(self, call: relax.Call) -> relax.Expr:  # noqa: D401
        call = super().visit_call_(call)
        if not isinstance(call.op, tvm.ir.Op) or len(call.args) != 1 and call.op.name != "relax.nn.softmax":
            return call
        ty = getattr(call.args[0], "ty", None)
        if not isinstance(ty, relax.TensorType) or str(ty.dtype) not in _FAST_DTYPES:
            return call
        name = call.op.name
        if name == "relax.nn.softmax":
            axis = int(call.attrs.axis)
            return self.builder_.call_te(_in_float32(lambda x: topi.nn.fast_softmax(x, axis)), call.args[0],
                                         primfunc_name_hint="softmax")
        if name == "relax.sigmoid":
            return self.builder_.call_te(_in_float32(_fast_sigmoid), call.args[0], primfunc_name_hint="sigmoid")
        if name == "relax.tanh":
            return self.builder_.call_te(_in_float32(topi.fast_tanh), call.args[0], primfunc_name_hint="tanh")
        return call


_FAST_DTYPES = ("float32", "float16", "bfloat16")


def _in_float32(compute):
    """``compute`` (a float32 TE function) for a tensor of any of ``_FAST_DTYPES``."""

    def wrapped(x):
        if x.dtype == "float32":
            return compute(x)
        return topi.cast(compute(topi.cast(x, "float32")), x.dtype)

    return wrapped


def _fast_sigmoid(x):
    one = tvm.tirx.const(1.0, "float32")
    e = topi.fast_exp(topi.negative(x))
    return te.compute(x.shape, lambda *i: one / (one + e(*i)), name="T_sigmoid", tag="elemwise")


_vectorizable_nonlinear = _mutator_pass("LeptonVectorizableNonlinear", _VectorizableNonlinear)


def _is_constant_derived(mutator: relax.PyExprMutator, expr: relax.Expr) -> bool:
    """A constant, or a layout op of one (the graph's weights before FoldConstant), bound to a
    variable or not."""
    for _ in range(8):
        if isinstance(expr, relax.Var):
            bound = mutator.lookup_binding(expr)
            if bound is None:
                return False
            expr = bound
        elif isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op) and expr.op.name in (
                "relax.permute_dims", "relax.astype", "relax.reshape"):
            expr = expr.args[0]
        else:
            break
    return isinstance(expr, tvm.ir.Constant)


@relax.expr_functor.mutator
class _PadMatmulColumns(relax.PyExprMutator):
    """Matmuls with a constant weight whose output width has no divisor of 4 or more (a CTC
    head over 8210 characters, 821 being prime): the weight gets zero columns up to a multiple of
    ``lanes`` and the result is sliced back, as :class:`_PadConvChannels` does for convolutions.
    Without it the register-tiled rule found no vector-wide tile of the output axis and did not
    repack the weight (8210 columns: 7.5 ms against 1.7 ms for 8208)."""

    def __init__(self, mod: tvm.IRModule, lanes: int):
        super().__init__(mod)
        self.lanes = lanes

    def visit_call_(self, call: relax.Call) -> relax.Expr:  # noqa: D401
        call = super().visit_call_(call)
        if not (isinstance(call.op, tvm.ir.Op) and call.op.name == "relax.matmul"):
            return call
        weight = call.args[1]
        shape = getattr(getattr(weight, "ty", None), "shape", None)
        if shape is None or len(shape.values) != 2 or not all(isinstance(d, tirx.IntImm) for d in shape.values):
            return call
        columns = int(shape.values[1])
        if columns % 4 == 0 or columns <= self.lanes or not _is_constant_derived(self, weight):
            return call
        rank = len(call.ty.shape.values) if getattr(call.ty, "shape", None) is not None else 2
        return _with_padded_weight(self.builder_, call, columns, self.lanes, out_axis=rank - 1)


def _runtime_row_tile(columns: int, lanes: int, registers: int) -> int:
    """The rows of the default register tile of a matmul with ``columns`` output columns whose
    row count is known only at run time (planned as if the rows were many)."""
    vl = _dividing_lanes(columns, lanes)
    vectors = columns // vl if vl >= 4 else 1
    return _register_tile(_RUNTIME_ROWS, vectors, registers)[0]


def _dividing_lanes(extent: int, lanes: int) -> int:
    """The widest power of two up to ``lanes`` that divides ``extent`` (no vector tail)."""
    vl = lanes
    while vl > 1 and extent % vl:
        vl //= 2
    return vl


@relax.expr_functor.mutator
class _PadRuntimeRows(relax.PyExprMutator):
    """Matmuls with a constant ``[K, N]`` weight whose row count is known only at run time (the
    box head of a detector after NMS, a dynamic batch): the rows (all leading axes) are padded
    with zeros, in a kernel of their own, to a multiple of the register tile's rows, and the
    result is cropped back. The register-tiled rule needs whole tiles; without them the matmul
    fell to the generic schedule (a 12544x1024 box-head matmul at 98 rows: 4.1 s; padded about
    20 ms; 9.8 ms with the rows known, see :func:`_apply_tiled`)."""

    def __init__(self, mod: tvm.IRModule, lanes: int, registers: int):
        super().__init__(mod)
        self.lanes, self.registers = lanes, registers

    def visit_call_(self, call: relax.Call) -> relax.Expr:  # noqa: D401
        call = super().visit_call_(call)
        if not (isinstance(call.op, tvm.ir.Op) and call.op.name == "relax.matmul"):
            return call
        x, weight = call.args
        w_shape = getattr(getattr(weight, "ty", None), "shape", None)
        x_shape = getattr(getattr(x, "ty", None), "shape", None)
        if w_shape is None or x_shape is None or len(w_shape.values) != 2 or len(x_shape.values) < 2 \
                or not all(isinstance(d, tirx.IntImm) for d in w_shape.values):
            return call
        lead, depth = list(x_shape.values[:-1]), x_shape.values[-1]
        if not isinstance(depth, tirx.IntImm) or all(isinstance(d, tirx.IntImm) for d in lead) \
                or call.ty.dtype != x.ty.dtype or not _is_constant_derived(self, weight):
            return call
        columns = int(w_shape.values[1])
        tile = _runtime_row_tile(columns, self.lanes, self.registers)
        if tile < 2:
            return call
        rows = lead[0]
        for d in lead[1:]:
            rows = rows * d
        padded_rows = tirx.floordiv(rows + (tile - 1), tile) * tile

        def pad(a):
            flat = topi.reshape(a, [rows, depth]) if len(lead) > 1 else a
            return te.compute((padded_rows, depth), lambda i, k: tirx.if_then_else(
                i < rows, flat[i, k], tirx.const(0, a.dtype)), name="rows_padded")

        def crop(a):
            return topi.reshape(te.compute((rows, columns), lambda i, j: a[i, j], name="rows_cropped"),
                                lead + [columns])

        wide = self.builder_.emit(relax.op.matmul(
            self.builder_.emit_te(pad, x, primfunc_name_hint="pad_rows"), weight, out_dtype=call.attrs.out_dtype))
        return self.builder_.call_te(crop, wide, primfunc_name_hint="crop_rows")


def _pad_runtime_rows_pass(target: tvm.target.Target) -> tvm.transform.Pass:
    lanes, registers = _lanes(target, 32), _vector_registers(target)
    return _mutator_pass("LeptonPadRuntimeRows", lambda mod: _PadRuntimeRows(mod, lanes, registers))


def _pad_matmul_columns_pass(target: tvm.target.Target) -> tvm.transform.Pass:
    lanes = _lanes(target, 32)
    return _mutator_pass("LeptonPadMatmulColumns", lambda mod: _PadMatmulColumns(mod, lanes))


def _pad_conv_channels_pass(target: tvm.target.Target) -> tvm.transform.Pass:
    lanes, registers = _lanes(target, 32), _vector_registers(target)
    return _mutator_pass("LeptonPadConvChannels", lambda mod: _PadConvChannels(mod, lanes, registers))


def _tile_friendly_rows(rows: int, vectors: int, registers: int) -> int:
    """The output width (a convolution's row axis) to compute, up to 3 columns more than
    ``rows``, whose register tile costs least per real column (see :func:`_tile_friendly_width`).
    A prime width longer than the tile can take has only 1-row tiles at 2+ vectors: tf2onnx's
    'same'-padded stride-2 convolutions make 65 -> 33 -> 17; 18 columns tile 9 x 2."""

    def cost(width: int) -> float:
        r, u = _register_tile(width, vectors, registers)
        return width * (1 + (r + u) / (r * u))

    best = min(range(rows, rows + 4), key=lambda w: (cost(w), w))
    return best if cost(best) < 0.9 * cost(rows) else rows  # a clear gain only: most widths tile fine


def _tile_friendly_width(width: int, lanes: int, rows: int, registers: int) -> int:
    """The padded channel count, of up to two vectors more than the next whole vector, whose
    register tile (:func:`_register_tile` over ``rows`` output columns) costs least: per vector
    of channels an FMA plus the loads per FMA of its tile (``r + u`` loads feed ``r * u`` FMAs).
    SqueezeNet's 1000 classes on a 13-wide map: 63 vectors only tile 13 x 1, a broadcast per
    FMA, and ran at half the speed of 64 vectors tiled 13 x 2 (measured: 1.56 against 0.74 ms)."""
    first = -(-width // lanes)

    def cost(vectors: int) -> float:
        r, u = _register_tile(rows, vectors, registers)
        return vectors * (1 + (r + u) / (r * u))

    return min(range(first, first + 3), key=lambda v: (cost(v), v)) * lanes


# A grouped convolution with more groups than this is not split into one convolution per group
# (that many small kernels) but computed on an expanded input (see _SplitGroupedConv._expanded).
MAX_SPLIT_GROUPS = 16


@relax.expr_functor.mutator
class _SplitGroupedConv(relax.PyExprMutator):
    """NHWC grouped convolutions (1 < groups < input channels: AlexNet's two towers, ShuffleNet's
    grouped 1x1s) as one convolution per group on a channel slice, concatenated. A grouped
    convolution reads, for output channel ``o``, the input channels of group ``o // (C_out /
    groups)``: its innermost output axis is not read contiguously, so no vectorizing rule applies
    and it ran scalar (AlexNet's three grouped convolutions took 83% of its time, 16x slower than
    onnxruntime). Each per-group convolution is a plain one, with the register-tiled (or
    Winograd) schedule and a prepacked weight slice. Depthwise convolutions are left alone (their
    rule handles them)."""

    def visit_call_(self, call: relax.Call) -> relax.Expr:  # noqa: D401
        call = super().visit_call_(call)
        if not (isinstance(call.op, tvm.ir.Op) and call.op.name == "relax.nn.conv2d"):
            return call
        attrs = call.attrs
        groups = int(attrs.groups)
        if groups == 1 or attrs.data_layout != "NHWC" or attrs.kernel_layout != "HWIO":
            return call
        x, w = call.args[0], call.args[1]
        x_shape, w_shape = getattr(x.ty, "shape", None), getattr(w.ty, "shape", None)
        if x_shape is None or w_shape is None or not isinstance(x_shape.values[3], tirx.IntImm) \
                or not all(isinstance(d, tirx.IntImm) for d in w_shape.values):
            return call
        in_channels, out_channels = int(x_shape.values[3]), int(w_shape.values[3])
        if groups == in_channels or in_channels % groups or out_channels % groups:
            return call
        cin, cout = in_channels // groups, out_channels // groups
        if groups > MAX_SPLIT_GROUPS:
            return self._expanded(call, x, w, cin, cout, out_channels)
        outs = []
        for g in range(groups):
            xg = self.builder_.emit(relax.op.strided_slice(x, axes=[3], begin=[g * cin], end=[(g + 1) * cin]))
            wg = self.builder_.emit(relax.op.strided_slice(w, axes=[3], begin=[g * cout], end=[(g + 1) * cout]))
            outs.append(self.builder_.emit(relax.op.nn.conv2d(
                xg, wg, strides=attrs.strides, padding=attrs.padding, dilation=attrs.dilation, groups=1,
                data_layout="NHWC", kernel_layout="HWIO", out_layout=attrs.out_layout,
                out_dtype=attrs.out_dtype)))
        return relax.op.concat(outs, axis=3)

    def _expanded(self, call: relax.Call, x, w, cin: int, cout: int, out_channels: int) -> relax.Expr:
        """Many groups (ResNeXt's 32, RegNet's 8-channel groups): the input is expanded once to
        ``[N, H, W, cin, C_out]`` (output channel ``o`` sees the ``cin`` channels of its group
        at ``[..., :, o]``), and the convolution becomes a reduction over (kh, kw, cin) that
        reads both the expansion and the weight contiguously along the output channel, like
        a depthwise one: the register-tiled rule vectorizes it. Costs ``cout``-fold copies of
        the input, no extra arithmetic."""
        attrs = call.attrs
        index = np.array([(o // cout) * cin + r for r in range(cin) for o in range(out_channels)], np.int64)
        expanded = self.builder_.emit(relax.op.take(x, relax.const(index), axis=3))
        n, h, wd = (x.ty.shape.values[i] for i in range(3))
        expanded = self.builder_.emit(relax.op.reshape(expanded, [n, h, wd, cin, out_channels]))
        strides = [int(v) for v in attrs.strides]
        dilation = [int(v) for v in attrs.dilation]
        padding = [int(v) for v in attrs.padding]
        out_dtype = str(attrs.out_dtype)
        if out_dtype in ("", "void", "None"):
            out_dtype = str(x.ty.dtype)
        return self.builder_.call_te(
            lambda xe, wt: _expanded_grouped_conv(xe, wt, strides, padding, dilation, out_dtype),
            expanded, w, primfunc_name_hint="grouped_conv2d")


def _expanded_grouped_conv(xe: te.Tensor, w: te.Tensor, strides, padding, dilation, out_dtype: str) -> te.Tensor:
    """NHWC grouped convolution on the expanded input ``xe`` [N, H, W, cin, C_out] and HWIO
    weight [KH, KW, cin, C_out] (see :meth:`_SplitGroupedConv._expanded`)."""
    n, h, wd, cin, channels = xe.shape
    kh_n, kw_n = w.shape[0], w.shape[1]
    top, left, bottom, right = padding
    padded = topi.nn.pad(xe, [0, top, left, 0, 0], [0, bottom, right, 0, 0]) if any(padding) else xe
    out_h = (h + top + bottom - dilation[0] * (kh_n - 1) - 1) // strides[0] + 1
    out_w = (wd + left + right - dilation[1] * (kw_n - 1) - 1) // strides[1] + 1
    kh = te.reduce_axis((0, kh_n), "kh")
    kw = te.reduce_axis((0, kw_n), "kw")
    rc = te.reduce_axis((0, cin), "rc")
    return te.compute(
        (n, out_h, out_w, channels),
        lambda b, y, x, c: te.sum(
            padded[b, y * strides[0] + kh * dilation[0], x * strides[1] + kw * dilation[1], rc, c].astype(out_dtype)
            * w[kh, kw, rc, c].astype(out_dtype), axis=[kh, kw, rc]),
        name="grouped_conv2d")


_split_grouped_conv = _mutator_pass("LeptonSplitGroupedConv", _SplitGroupedConv)


@relax.expr_functor.mutator
class _NonOverlappingConvTranspose(relax.PyExprMutator):
    """A 2-D transposed convolution whose kernel equals its stride (the 2x2 stride-2 upsampling
    of U-Nets and of PP-OCR's DB text-detection head) writes each output pixel from exactly one
    input pixel: it is a 1x1 convolution to ``C_out * kh * kw`` channels followed by a
    depth-to-space reshuffle, cropped by the pads. Legalized as it is, TVM's
    ``conv2d_transpose`` dilates the input with zeros and runs an unscheduled direct
    convolution (the two of PP-OCR's DB head took 37% of its run). Runs before the layout
    conversion, so the 1x1 convolution becomes an NHWC one like every other."""

    def visit_call_(self, call: relax.Call) -> relax.Expr:  # noqa: D401
        call = super().visit_call_(call)
        if not (isinstance(call.op, tvm.ir.Op) and call.op.name == "relax.nn.conv2d_transpose"):
            return call
        a = call.attrs
        x, w = call.args[0], call.args[1]
        shape = getattr(w.ty, "shape", None)
        if (a.data_layout != "NCHW" or a.kernel_layout != "IOHW" or int(a.groups) != 1 or shape is None
                or not all(isinstance(d, tirx.IntImm) for d in shape.values)
                or any(int(d) != 1 for d in a.dilation) or any(int(p) != 0 for p in a.output_padding)):
            return call
        cin, cout, kh, kw = (int(d) for d in shape.values)
        if [int(s) for s in a.strides] != [kh, kw]:
            return call
        op, bb = relax.op, self.builder_
        n, _, h, wd = shape_of_expr(x)
        weight = op.reshape(op.permute_dims(w, [1, 2, 3, 0]), [cout * kh * kw, cin, 1, 1])
        conv = bb.emit(op.nn.conv2d(x, bb.emit(weight), out_dtype=a.out_dtype))
        spread = bb.emit(op.reshape(conv, [n, cout, kh, kw, h, wd]))
        spread = bb.emit(op.permute_dims(spread, [0, 1, 4, 2, 5, 3]))
        out = op.reshape(spread, [n, cout, h * kh, wd * kw])
        top, left, bottom, right = (int(p) for p in a.padding)
        if top or left or bottom or right:
            out = op.strided_slice(bb.emit(out), axes=[2, 3], begin=[top, left],
                                   end=[h * kh - bottom, wd * kw - right])
        return out


def shape_of_expr(expr: relax.Expr) -> list:
    return list(expr.ty.shape.values)


_non_overlapping_conv_transpose = _mutator_pass("LeptonNonOverlappingConvTranspose", _NonOverlappingConvTranspose)


def cpu_graph_passes(target: tvm.target.Target) -> list[tvm.transform.Pass]:
    """Relax passes to run before legalization: float16/bfloat16 matmuls and convolutions
    computed from float32 copies of their operands (:class:`_WidenLowPrecision`), NHWC/HWIO
    convolutions (see module doc), whose odd output channel counts are padded to whole vectors."""
    from lepton_opt.targets.ops.fused import expand_attention_pass  # no CPU attention kernel: see there

    return [
        expand_attention_pass,
        _widen_low_precision,
        relax.transform.Normalize(),
        _scalar_const_to_rank,
        _non_overlapping_conv_transpose,
        relax.transform.Normalize(),
        _convert_conv_layout,
        relax.transform.Normalize(),
        _nan_keeping_relu,
        # After the layout conversion, which knows relax ops but not the kernels this emits.
        _vectorizable_nonlinear,
        _split_grouped_conv,
        relax.transform.Normalize(),
        _winograd.winograd_pass,
        relax.transform.Normalize(),
        _pad_conv_channels_pass(target),
        relax.transform.Normalize(),
        _pad_matmul_columns_pass(target),
        relax.transform.Normalize(),
        _pad_runtime_rows_pass(target),
        relax.transform.Normalize(),
    ]


# ----------------------------------------------------------------------------------------
# Helpers on schedules
# ----------------------------------------------------------------------------------------

def _extent(sch: s_tir.Schedule, loop) -> int | None:
    ext = sch.get(loop).extent
    return int(ext) if isinstance(ext, tirx.IntImm) else None


def _largest_divisor(n: int, limit: int) -> int:
    for d in range(min(n, limit), 0, -1):
        if n % d == 0:
            return d
    return 1


def _is_scheduled(func: tirx.PrimFunc) -> bool:
    attrs = func.attrs
    if attrs is None:
        return False
    for key in ("tirx.is_scheduled", "tir.is_scheduled"):
        if key in attrs and bool(attrs[key]):
            return True
    return False


def _block_iter_kinds(sch: s_tir.Schedule, block) -> list[str]:
    stmt = sch.get(block)
    return [
        "S" if iv.iter_type == tirx.IterVar.DataPar
        else "R" if iv.iter_type == tirx.IterVar.CommReduce else "O"
        for iv in stmt.iter_vars
    ]


def _has_if_then_else(stmt) -> bool:
    return bool(tvm.get_global_func("s_tir.schedule.HasIfThenElse")(stmt))


def _inline_injective(sch: s_tir.Schedule, keep_padding: bool, keep=None) -> None:
    """Inline spatial blocks into their consumers (or producers) until nothing changes.

    Padding blocks (an ``if_then_else`` body) are kept with ``keep_padding``: inlined into a
    convolution they put a branch on every multiply-add of the innermost loop. Blocks for which
    ``keep(block)`` is true are kept too.
    """
    # Sweeps over every block, again while a sweep inlined something (an inline can make a
    # neighbour inlinable). Restarting from the first block after each inline was quadratic: a
    # fused function of a few hundred blocks (unrolled GRUs) took minutes.
    changed = True
    while changed:
        changed = False
        root = sch.get_sblock("root") if _has_root(sch) else None
        blocks = sch.get_child_blocks(root) if root is not None else []
        for block in blocks:
            if any(k != "S" for k in _block_iter_kinds(sch, block)):
                continue
            if keep_padding and _has_if_then_else(sch.get(block)):
                continue
            if keep is not None and keep(block):
                continue
            try:
                sch.compute_inline(block)
                changed = True
                continue
            except Exception:  # noqa: BLE001 - not inlinable: try the other direction
                pass
            try:
                sch.reverse_compute_inline(block)
                changed = True
            except Exception:  # noqa: BLE001 - neither: the block stays
                pass


def _has_root(sch: s_tir.Schedule) -> bool:
    try:
        sch.get_sblock("root")
        return True
    except Exception:  # noqa: BLE001
        return False


def _root_blocks(sch: s_tir.Schedule) -> list:
    return list(sch.get_child_blocks(sch.get_sblock("root")))


def _vectorize_innermost(sch: s_tir.Schedule, loop, lanes: int) -> None:
    """Vectorize ``loop`` (spatial), splitting it into ``lanes``-wide pieces when it divides."""
    ext = _extent(sch, loop)
    if ext is None or ext < 2:
        return
    if ext <= lanes:
        sch.vectorize(loop)
        return
    factor = _largest_divisor(ext, lanes)
    if factor >= max(lanes // 4, 2):
        _, inner = sch.split(loop, factors=[None, factor])
        sch.vectorize(inner)
    elif ext <= 4 * lanes:
        # An odd extent such as 13 or 49: LLVM splits a short odd vector into legal pieces.
        sch.vectorize(loop)


def _parallel_vectorize_block(sch: s_tir.Schedule, block, lanes: int, parallel: bool = True):
    """Fuse+parallelize the leading spatial loops and vectorize the innermost one."""
    loops = sch.get_loops(block)
    kinds = _block_iter_kinds(sch, block)
    if not loops:
        return
    # Loops bound only to spatial iterators, up to the first reduction loop.
    spatial_prefix = []
    iter_kind_of = _loop_kinds(sch, block, loops, kinds)
    for lp, kind in zip(loops, iter_kind_of):
        if kind != "S":
            break
        spatial_prefix.append(lp)
    all_spatial = len(spatial_prefix) == len(loops)
    vec_loop = None
    if all_spatial:
        vec_loop = loops[-1]
        outer = spatial_prefix[:-1]
    else:
        outer = spatial_prefix
    if vec_loop is not None:
        _vectorize_innermost(sch, vec_loop, lanes)
    if parallel and outer:
        fused = sch.fuse(*outer) if len(outer) > 1 else outer[0]
        ext = _extent(sch, fused)
        if ext is None or ext > 1:
            sch.parallel(fused)


def _loop_kinds(sch: s_tir.Schedule, block, loops, kinds) -> list[str]:
    """For each loop, 'S' if it is bound only to spatial iterators, else 'R'."""
    stmt = sch.get(block)
    realize = _block_realize(sch, block)
    loop_vars = [sch.get(lp).loop_var for lp in loops]
    result = []
    for lv in loop_vars:
        kind = "S"
        for iv_kind, binding in zip(kinds, realize.iter_values):
            if iv_kind != "S" and _uses_var(binding, lv):
                kind = "R"
                break
        result.append(kind)
    del stmt
    return result


def _block_realize(sch: s_tir.Schedule, block):
    """The SBlockRealize of ``block`` (its iterator bindings)."""
    target_block = sch.get(block)
    loops = sch.get_loops(block)
    body = sch.get(loops[-1]).body if loops else sch.mod["main"].body.block.body
    stack = [body]
    while stack:
        node = stack.pop()
        if isinstance(node, s_tir.SBlockRealize):
            if node.block.same_as(target_block):
                return node
        elif isinstance(node, tirx.SeqStmt):
            stack.extend(node.seq)
        elif hasattr(node, "body") and not isinstance(node, tirx.For):
            stack.append(node.body)
    raise ValueError("block realize not found")


def _uses_var(expr, var) -> bool:
    return any(v.same_as(var) for v in tirx.analysis.undefined_vars(expr))


# ----------------------------------------------------------------------------------------
# Rules
# ----------------------------------------------------------------------------------------

def _rule_generic(func: tirx.PrimFunc, target: tvm.target.Target) -> s_tir.Schedule | None:
    sch = s_tir.Schedule(func)
    _inline_injective(sch, keep_padding=False)
    for block in _root_blocks(sch):
        dtype_bits = _write_dtype_bits(sch, block)
        _parallel_vectorize_block(sch, block, _lanes(target, dtype_bits))
    return sch


def _write_dtype_bits(sch: s_tir.Schedule, block) -> int:
    stmt = sch.get(block)
    if stmt.writes:
        return _dtype_bits(stmt.writes[0].source.dtype)
    return 32


def _rule_rows(func: tirx.PrimFunc, target: tvm.target.Target) -> s_tir.Schedule | None:
    """Row-wise functions (layer norm, softmax, RMS norm: reductions over the innermost axis of
    each row, then element-wise over that row): rows in parallel, every block computed per row,
    each reduction as lane-wise partial sums (rfactor, vectorized) then across the lanes, the
    element-wise blocks vectorized. dlight's CPU reduction rule (the fallback) reduces each row
    one element at a time: a BERT-base layer norm ran at 12 GFLOP/s."""
    sch = s_tir.Schedule(func)
    _inline_injective(sch, keep_padding=False)
    blocks = _root_blocks(sch)
    out = blocks[-1]
    out_kinds = _block_iter_kinds(sch, out)
    loops = sch.get_loops(out)
    if "R" in out_kinds or len(loops) < 2 or len(loops) != len(out_kinds):
        return None
    *rows, inner = loops
    width = _extent(sch, inner)
    row_extents = [_extent(sch, lp) for lp in rows]
    lanes = _lanes(target, _write_dtype_bits(sch, out))
    if width is None or width < lanes or None in row_extents:
        return None
    reductions = [b for b in blocks[:-1] if "R" in _block_iter_kinds(sch, b)]
    if not reductions:
        return None
    for block in blocks[:-1]:
        kinds = _block_iter_kinds(sch, block)
        extents = [_extent(sch, lp) for lp in sch.get_loops(block)]
        if kinds[:len(rows)] != ["S"] * len(rows) or extents[:len(rows)] != row_extents:
            return None
        if kinds[len(rows):] not in (["R"], ["S"]) or extents[len(rows):] != [width]:
            return None
    vl = _largest_divisor(width, lanes)
    partials = _lane_partials(sch, reductions, vl) if vl >= 4 else []
    row = sch.fuse(*rows) if len(rows) > 1 else rows[0]
    sch.parallel(row)
    for block in reversed(_root_blocks(sch)[:-1]):
        sch.compute_at(block, row, preserve_unit_loops=True)
    _vectorize_lane_partials(sch, partials)
    partial_names = {sch.get(p).name_hint for p in partials}
    for block in sch.get_child_blocks(row):
        if sch.get(block).name_hint not in partial_names and "R" not in _block_iter_kinds(sch, block):
            _vectorize_innermost(sch, sch.get_loops(block)[-1], lanes)
    return sch


def _lane_partials(sch: s_tir.Schedule, reductions, lanes: int) -> list:
    """Each reduction over its innermost loop as ``lanes`` lane-wise partial results (rfactor)
    followed by one reduction across the lanes; returns the partial blocks."""
    partials = []
    for block in reductions:
        _, lane = sch.split(sch.get_loops(block)[-1], [None, lanes])
        partials.append(sch.rfactor(lane, 0))
    return partials


def _vectorize_lane_partials(sch: s_tir.Schedule, partials) -> None:
    """The lane loop of each partial block innermost and vectorized (one vector op per element
    step of the reduction)."""
    for partial in partials:
        loops = sch.get_loops(partial)
        lane_var = _block_realize(sch, partial).iter_values[0]  # rfactor puts the lane iterator first
        (at,) = [n for n, lp in enumerate(loops) if sch.get(lp).loop_var.same_as(lane_var)]
        # The lane loop innermost below it, wherever a compute_at left it: contiguous vectors.
        sch.reorder(*loops[at + 1:], loops[at])
        sch.vectorize(loops[at])


def _rule_channel_reduction(func: tirx.PrimFunc, target: tvm.target.Target) -> s_tir.Schedule | None:
    """Reductions over outer axes of channels-last tensors (instance norm and global pooling
    over NHWC's H and W, window pooling): each reduction walks its reduced axes with the
    channels innermost as vectors of partial results, in parallel over the other output indices
    and channel vectors; the element-wise blocks (normalize, activation) run as their own
    parallel, vectorized loops. dlight's reduction rule (the fallback) computed the whole
    reduction again for every parallel row of its consumer: a 96x96x32 instance norm did 96
    times the work (44-60% of a style-transfer net's run)."""
    sch = s_tir.Schedule(func)
    _inline_injective(sch, keep_padding=False)
    blocks = _root_blocks(sch)
    reductions = [b for b in blocks if "R" in _block_iter_kinds(sch, b)]
    if not reductions:
        return None
    plans = []
    for block in reductions:
        stmt = sch.get(block)
        kinds = _block_iter_kinds(sch, block)
        loops = sch.get_loops(block)
        realize = _block_realize(sch, block)
        if len(loops) != len(kinds) or not all(
                isinstance(b, tirx.Var) and b.same_as(sch.get(lp).loop_var)
                for lp, b in zip(loops, realize.iter_values)):
            return None
        iter_vars = [iv.var for iv in stmt.iter_vars]
        last = [w.region[-1].min for w in stmt.writes]
        if not all(isinstance(e, tirx.Var) for e in last) or any(not e.same_as(last[0]) for e in last):
            return None
        (channel,) = [n for n, v in enumerate(iter_vars) if v.same_as(last[0])] or [None]
        if channel is None or kinds[channel] != "S":
            return None
        for region in stmt.reads:
            idx = [r.min for r in region.region]
            if any(_uses_var(e, iter_vars[channel]) for e in idx[:-1]) or (
                    _uses_var(idx[-1], iter_vars[channel]) and not _is_var_plus_other(idx[-1], iter_vars[channel])):
                return None
        extent = _extent(sch, loops[channel])
        vl = _largest_divisor(extent, _lanes(target, _write_dtype_bits(sch, block))) if extent else 0
        if vl < 4 or (vl & (vl - 1)):
            return None
        plans.append((block, loops, kinds, channel, vl))
    for block, loops, kinds, channel, vl in plans:
        c_outer, c_inner = sch.split(loops[channel], factors=[None, vl])
        others = [lp for n, (lp, k) in enumerate(zip(loops, kinds)) if k == "S" and n != channel]
        reduced = [lp for lp, k in zip(loops, kinds) if k == "R"]
        sch.reorder(*others, c_outer, *reduced, c_inner)
        outer = sch.fuse(*others, c_outer) if others else c_outer
        sch.parallel(outer)
        sch.vectorize(c_inner)  # while the block is still a whole reduction: legality is checked on it
        init = sch.decompose_reduction(block, reduced[0])
        sch.vectorize(sch.get_loops(init)[-1])
    lanes = _lanes(target, 32)
    for block in _root_blocks(sch):
        if "R" not in _block_iter_kinds(sch, block) and not sch.get(block).name_hint.endswith("_init"):
            _parallel_vectorize_block(sch, block, _lanes(target, _write_dtype_bits(sch, block)) or lanes)
    return sch


def _rule_row_reduction(func: tirx.PrimFunc, target: tvm.target.Target) -> s_tir.Schedule | None:
    return _DlightReduction().apply(func, target, False)


@dataclasses.dataclass(frozen=True)
class Tile:
    """The knobs of a register-tiled kernel, which tuning searches (:mod:`.tune`).

    ``rows`` x ``vectors``: the micro-kernel's accumulators (rows of the output by vectors of its
    innermost axis). ``order``: how the parallel loop walks the output tiles: ``"rows"`` (for each
    other output index, each weight panel over all row tiles: the default), ``"panels"`` (each
    weight panel over all other output indices: a panel is read from memory once per call) or
    ``"inputs"`` (row tiles outer: each input row is read once, the weight panels stream).
    """

    rows: int
    vectors: int
    order: str = "rows"


ORDERS = ("rows", "panels", "inputs")


@dataclasses.dataclass
class _TiledPlan:
    """What the register-tiled rule found in a kernel (its knobs are chosen apart: :class:`Tile`)."""

    sch: s_tir.Schedule
    main: object
    producers: list
    epilogue: list
    loop_of: dict
    vec_var: object
    row_var: object
    other_spatial: list
    red_vars: list
    rows: int  # extent of the row axis (1 without one)
    vectors: int  # vectors of the vector axis
    vl: int  # lanes of one vector
    lanes: int  # the target's lanes for the output type
    registers: int
    other_extent: int  # product of the other output extents (those known at build time)
    runtime_rows: bool = False  # the row extent is known at run time only (padded to ``rows``)
    runtime_outer: object = None  # an outer axis known at run time only (a dynamic batch)

    def space(self) -> list[Tile]:
        return tile_space(self.rows, self.vectors, self.registers, self.other_extent > 1, self.default())

    def default(self) -> Tile:
        return Tile(*_register_tile(self.rows, self.vectors, self.registers))


def tile_space(rows: int, vectors: int, registers: int, orders: bool, default: Tile) -> list[Tile]:
    """Every register tile that fits the register file (``r*u + u + 1`` vectors, divisors of the
    extents, at most 16 rows and 6 vectors), each walk order where it changes anything; the
    default first, then the tiles with the most accumulators."""
    tiles = []
    for u in range(1, min(6, vectors) + 1):
        if vectors % u:
            continue
        for r in range(1, min(16, rows) + 1):
            if rows % r or r * u + u + 1 > registers:
                continue
            for order in ORDERS if orders else ORDERS[:1]:
                tiles.append(Tile(r, u, order))
    tiles.sort(key=lambda t: (t != default, -(t.rows * t.vectors), -t.rows, ORDERS.index(t.order)))
    return tiles


def _rule_tiled_reduction(func: tirx.PrimFunc, target: tvm.target.Target,
                          tile: Tile | None = None) -> s_tir.Schedule | None:
    plan = tiled_plan(s_tir.Schedule(func), target)
    if plan is None:
        return None
    _apply_tiled(plan, tile or plan.default())
    return plan.sch


def tiled_plan(sch: s_tir.Schedule, target: tvm.target.Target, padded: bool = False,
               row_multiple: int = 1) -> _TiledPlan | None:
    """Analyze a kernel for the register-tiled rule (None if it does not apply); the schedule
    of the plan may be a padded copy of ``sch`` (``padded``: this is that copy, whose row
    extent, if known only at run time, is a multiple of ``row_multiple``)."""
    _inline_injective(sch, keep_padding=True)
    blocks = _root_blocks(sch)
    red_blocks = [b for b in blocks if "R" in _block_iter_kinds(sch, b)]
    if len(red_blocks) != 1:
        return None
    main = red_blocks[0]
    main_idx = [sch.get(b).same_as(sch.get(main)) for b in blocks].index(True)
    producers, epilogue = blocks[:main_idx], blocks[main_idx + 1:]
    if any("R" in _block_iter_kinds(sch, b) for b in producers + epilogue):
        return None
    stmt = sch.get(main)
    if len(stmt.writes) != 1 or not _is_simple_reduction(stmt):
        return None
    kinds = _block_iter_kinds(sch, main)
    if "O" in kinds:
        return None
    iter_vars = [iv.var for iv in stmt.iter_vars]
    extents = [iv.dom.extent for iv in stmt.iter_vars]
    # One extent may be known only at run time: the row axis (the rows of a matmul after NMS, a
    # dynamic batch of a matmul), which is then padded (below), or another outer axis of the
    # output (a convolution's dynamic batch), which stays a loop around the tiled kernel.
    runtime = [iv for iv, e in zip(iter_vars, extents) if not isinstance(e, tirx.IntImm)]
    if len(runtime) > 1:
        return None
    extents = [_RUNTIME_ROWS if not isinstance(e, tirx.IntImm) else int(e) for e in extents]
    loops = sch.get_loops(main)
    realize = _block_realize(sch, main)
    # Need the canonical one-loop-per-iterator form to map iterators to loops.
    if len(loops) != len(iter_vars):
        return None
    loop_of = {}
    for lp, binding, iv in zip(loops, realize.iter_values, iter_vars):
        if not (isinstance(binding, tirx.Var) and binding.same_as(sch.get(lp).loop_var)):
            return None
        loop_of[iv] = lp

    # The vector axis: the innermost non-unit index of the output, a bare spatial iterator.
    out_indices = [r.min for r in stmt.writes[0].region]
    spatial = [iv for iv, k in zip(iter_vars, kinds) if k == "S"]
    ext_of = dict(zip(iter_vars, extents))
    out_axes = []
    for idx in out_indices:
        if isinstance(idx, tirx.Var) and any(idx.same_as(v) for v in spatial):
            var = next(v for v in spatial if idx.same_as(v))
            if ext_of[var] > 1:
                out_axes.append(var)
        elif not (isinstance(idx, tirx.IntImm)):
            return None
    if not out_axes:
        return None
    vec_var = out_axes[-1]
    row_var = out_axes[-2] if len(out_axes) >= 2 else None
    runtime_outer = None
    if runtime and (row_var is None or not runtime[0].same_as(row_var)):
        if runtime[0].same_as(vec_var) or not any(runtime[0].same_as(v) for v in out_axes):
            return None
        runtime_outer, runtime = runtime[0], []
        ext_of[runtime_outer] = 1  # planned as one: the loop around the tiles
    # Every read must index the vector axis contiguously (last index, stride 1) or not at all.
    for region in stmt.reads:
        idx = [r.min for r in region.region]
        for pos, e in enumerate(idx):
            if _uses_var(e, vec_var):
                if pos != len(idx) - 1 or not _is_var_plus_other(e, vec_var):
                    return None
    dtype_bits = _dtype_bits(stmt.writes[0].source.dtype)
    lanes = _lanes(target, dtype_bits)
    vext = ext_of[vec_var]
    # Lanes: the widest power of two dividing the extent (no tail), whole loop if short.
    vl = _dividing_lanes(vext, lanes)
    odd = vl < 4 and vext > lanes  # no divisor of 4 or more, and longer than one vector
    rows_ext = ext_of[row_var] if row_var is not None else 1
    few_rows = rows_ext > _ROW_PAD and _largest_divisor(rows_ext, _MAX_ROWS) < 4
    row_pad = _ROW_PAD
    if runtime:
        # Rows known only at run time must come in whole row tiles: with a guarded last tile the
        # accumulators stayed in memory (a 12544x1024 matmul at 100 rows: 25 ms, 19 ms padded).
        # Matmuls with a constant weight are padded in the graph (_PadRuntimeRows); others here,
        # in the kernel.
        row_pad = _runtime_row_tile(vext, lanes, _vector_registers(target))
        row_extent = next(iv.dom.extent for iv in stmt.iter_vars if iv.var.same_as(row_var))
        if Analyzer().can_prove(tirx.floormod(row_extent, row_pad) == 0):
            rows_ext = row_pad  # padded in the graph (_PadRuntimeRows)
        elif padded:
            if row_multiple < 2:
                return None
            rows_ext = row_multiple
        else:
            few_rows = True
    if (odd or few_rows) and not padded:
        # An extent with no useful divisor (197 tokens, 45 or 179 channels) leaves a scalar, an
        # odd-width or a one-row micro-kernel: pad the vector axis to a multiple of the lanes
        # and the row axis to a multiple of _ROW_PAD (the padded inputs and the cropped output
        # become blocks of their own) and schedule that instead. Only einsum-shaped blocks
        # (matmuls) can be padded; convolutions are padded in the graph (_PadConvChannels).
        padding = [lanes if iv.same_as(vec_var) and odd else
                   row_pad if row_var is not None and iv.same_as(row_var) and few_rows else 1
                   for iv in iter_vars]
        try:
            padded_sch = sch.copy()
            padded_sch.pad_einsum(main, padding)
            found = tiled_plan(padded_sch, target, padded=True, row_multiple=row_pad if few_rows else 1)
        except Exception:  # noqa: BLE001 - not an einsum, or the padded form did not schedule
            found = None
        if found is not None:
            return found
    if vl < 4 and vext <= 4 * lanes:
        vl = vext  # short: one (odd-width) vector, which LLVM splits into legal pieces
    other = [v for v in spatial if not v.same_as(vec_var) and (row_var is None or not v.same_as(row_var))
             and (runtime_outer is None or not v.same_as(runtime_outer))]
    other_extent = 1
    for v in other:
        other_extent *= ext_of[v]
    return _TiledPlan(sch, main, producers, epilogue, loop_of, vec_var, row_var, other,
                      [iv for iv, k in zip(iter_vars, kinds) if k == "R"], rows_ext, vext // vl, vl, lanes,
                      _vector_registers(target), other_extent, bool(runtime), runtime_outer)


def _apply_tiled(plan: _TiledPlan, tile: Tile) -> None:
    sch, main, loop_of = plan.sch, plan.main, plan.loop_of
    _pack_constant_operands(sch, main, plan.vec_var, plan.vl)
    # Cache the accumulators in a small local buffer, written back once per tile.
    wb = sch.cache_write(main, 0, "local")

    vo, vu, vv = sch.split(loop_of[plan.vec_var], factors=[None, tile.vectors, plan.vl])
    if plan.row_var is not None:
        ro, ri = sch.split(loop_of[plan.row_var], factors=[None, tile.rows])
        row_outer, row_inner = [ro], [ri]
    else:
        row_outer, row_inner = [], []
    other = [loop_of[v] for v in plan.other_spatial]
    red_loops = [loop_of[v] for v in plan.red_vars]
    if plan.runtime_rows:
        # Row tiles counted at run time stay a loop of their own inside the parallel one: fused
        # with it, every index divides by that count (12544x1024 at 98 rows: 28 ms fused, 22 ms
        # apart). Still about 2x the time with the rows known: in a kernel with a symbolic shape
        # LLVM gives every buffer access one alias class, so the accumulators are stored back on
        # every step of the reduction (seen in the generated IR).
        sch.reorder(*other, vo, *row_outer, *red_loops, *row_inner, vu, vv)
        static = other + [vo]
        parallel_loop = sch.fuse(*static) if len(static) > 1 else static[0]
        sch.parallel(parallel_loop)
        tile_loop = row_outer[0]
    else:
        outer = {"rows": other + [vo] + row_outer, "panels": [vo] + other + row_outer,
                 "inputs": other + row_outer + [vo]}[tile.order]
        # A run-time outer axis (a dynamic batch) is a serial loop around the parallel tiles: fused
        # with them, every index would divide by the run-time extent.
        batch = [loop_of[plan.runtime_outer]] if plan.runtime_outer is not None else []
        sch.reorder(*batch, *outer, *red_loops, *row_inner, vu, vv)
        tile_loop = sch.fuse(*outer) if len(outer) > 1 else outer[0]
        sch.parallel(tile_loop)
    _compute_epilogue_per_tile(sch, tile_loop, wb, plan.epilogue)
    # Vectorize while the block is still a whole reduction: legality is checked on it.
    for lp in row_inner:
        sch.unroll(lp)
    sch.unroll(vu)
    sch.vectorize(vv)
    init = sch.decompose_reduction(main, red_loops[0])
    init_loops = sch.get_loops(init)
    _vectorize_innermost(sch, init_loops[-1], plan.lanes)
    for block in [wb] + list(plan.epilogue):
        try:
            blk_loops = sch.get_loops(block)
        except Exception:  # noqa: BLE001 - wb was inlined
            continue
        _vectorize_innermost(sch, blk_loops[-1], plan.lanes)
    for block in plan.producers:
        _parallel_vectorize_block(sch, block, plan.lanes)


# Marks the blocks that repack a constant operand; SplitLayoutRewritePreproc moves them out of
# the kernel and FoldConstant then evaluates them at build time.
_LAYOUT_REWRITE = "meta_schedule.layout_rewrite_preproc"


def _pack_constant_operands(sch: s_tir.Schedule, main, vec_var, vl: int) -> None:
    """Repack each constant operand (a weight) of the main block that the vector axis indexes
    last, ``W[..., n] -> W[n // vl, ..., n % vl]``: the micro-kernel then reads each weight
    vector panel contiguously over the whole reduction. Row-major ``[K, N]`` weights put every
    ``k`` of a panel on a new page (N * 4 bytes apart); packed, a BERT-base 128x768x3072 matmul
    ran at 450 instead of 300 GFLOP/s, deep 14x14 convolutions 20% faster. The repacking is a
    layout-rewrite block that the build moves out of the kernel and folds into the constant
    (TVM's weight pre-packing: ``AttachAttrLayoutFreeBuffers`` / ``SplitLayoutRewritePreproc``)."""
    func = sch.mod["main"]
    free = {int(i) for i in (func.attrs.get("layout_free_buffers", []) if func.attrs is not None else [])}
    if not free or vl < 2:
        return
    stmt = sch.get(main)
    for index, region in enumerate(stmt.reads):
        position = next((i for i, p in enumerate(func.params) if p.same_as(region.source)), None)
        indices = [r.min for r in region.region]
        if position not in free or len(indices) < 2:
            continue
        last = indices[-1]
        if not (isinstance(last, tirx.Var) and last.same_as(vec_var)):
            continue
        if any(_uses_var(e, vec_var) for e in indices[:-1]) or any(int(r.extent) != 1 for r in region.region):
            continue
        extent = region.source.ty.shape[-1]
        if not (isinstance(extent, tirx.IntImm) and int(extent) % vl == 0 and int(extent) > vl):
            continue
        packed = sch.cache_read(main, index, "global")
        sch.annotate(packed, _LAYOUT_REWRITE, True)
        sch.transform_layout(main, ("read", index), lambda *i: (i[-1] // vl, *i[:-1], i[-1] % vl))


def _is_simple_reduction(stmt) -> bool:
    """A block whose init exists and whose body is a single buffer store (sum-like)."""
    return stmt.init is not None and isinstance(stmt.body, tirx.BufferStore)


def _is_var_plus_other(expr, var) -> bool:
    """``var`` or ``var + e`` / ``e + var`` with e independent of var (stride 1)."""
    if isinstance(expr, tirx.Var):
        return expr.same_as(var)
    if isinstance(expr, tirx.Add):
        a, b = expr.a, expr.b
        if _is_var_plus_other(a, var) and not _uses_var(b, var):
            return True
        if _is_var_plus_other(b, var) and not _uses_var(a, var):
            return True
    if isinstance(expr, tirx.Sub):
        return _is_var_plus_other(expr.a, var) and not _uses_var(expr.b, var)
    return False


def _rule_int8(func: tirx.PrimFunc, target: tvm.target.Target, tile: Tile | None = None) -> s_tir.Schedule | None:
    """The integer dot-product kernels of quantized models (:mod:`.int8`): a register tile of
    ``rows x u`` vectors of 16 int32 accumulators over (rows, output channels), the reduction
    loops outside it, the 16 x 4 dot product tensorized to VNNI where the target has it (else
    vectorized int32 arithmetic), the requantization epilogue per tile, tiles in parallel."""
    plan = int8_plan(s_tir.Schedule(func), target)
    if plan is None:
        return None
    _apply_int8(plan, tile or plan.default(), target)
    return plan.sch


@dataclasses.dataclass
class _Int8Plan:
    sch: s_tir.Schedule
    main: object
    producers: list
    epilogue: list
    rows: int
    vectors: int
    registers: int
    other_extent: int

    def space(self) -> list[Tile]:
        return tile_space(self.rows, self.vectors, self.registers, self.other_extent > 1, self.default())

    def default(self) -> Tile:
        # Row tiles outside the channel panels: measured faster than the float kernels' order here.
        return Tile(*_register_tile(self.rows, self.vectors, self.registers), order="inputs")


def int8_plan(sch: s_tir.Schedule, target: tvm.target.Target) -> _Int8Plan | None:
    found = [b for b in _root_blocks(sch) if sch.get(b).name_hint.startswith(_int8.BLOCK_PREFIX)]
    if len(found) != 1:
        return None
    main = found[0]

    def feeds_main(block) -> bool:
        # An inlined producer would leave an expression where the dot product needs a 4-byte load.
        return any(sch.get(c).same_as(sch.get(main)) for c in sch.get_consumers(block))

    _inline_injective(sch, keep_padding=True, keep=feeds_main)
    blocks = _root_blocks(sch)
    idx = [sch.get(b).same_as(sch.get(main)) for b in blocks].index(True)
    *outer, row, channel = _int8_loops(sch, main)[0]
    other_extent = 1
    for lp in outer:
        other_extent *= _extent(sch, lp) or 2
    # A dynamic row count (the batch of a 2-D matmul) gets one row per micro-kernel.
    return _Int8Plan(sch, main, blocks[:idx], blocks[idx + 1:], _extent(sch, row) or 1,
                     _extent(sch, channel) // _int8.LANES, _vector_registers(target), other_extent)


def _int8_loops(sch: s_tir.Schedule, main) -> tuple[list, list]:
    """Spatial (..., row, channel) and reduction (..., group, 4) loops, as the computes define them."""
    loops = sch.get_loops(main)
    n_red = 2 if sch.get(main).name_hint.endswith("dense") else 4
    return loops[:-n_red], loops[-n_red:]


def _apply_int8(plan: _Int8Plan, tile: Tile, target: tvm.target.Target) -> None:
    sch, main, lanes = plan.sch, plan.main, _int8.LANES
    (*other, row, channel), red = _int8_loops(sch, main)
    wb = sch.cache_write(main, 0, "local")
    ro, ri = sch.split(row, factors=[None, tile.rows])
    co_o, co_i, lane = sch.split(channel, factors=[None, tile.vectors, lanes])
    outer = {"rows": [*other, co_o, ro], "panels": [co_o, *other, ro], "inputs": [*other, ro, co_o]}[tile.order]
    sch.reorder(*outer, *red[:-1], ri, co_i, lane, red[-1])
    tile_loop = sch.fuse(*outer)
    sch.parallel(tile_loop)
    _compute_epilogue_per_tile(sch, tile_loop, wb, plan.epilogue)
    init = sch.decompose_reduction(main, red[0])
    if _int8.has_vnni(target):
        sch.tensorize(lane, _int8.VNNI_INTRIN)
    else:
        sch.vectorize(lane)
    sch.unroll(ri)
    sch.unroll(co_i)
    sch.vectorize(sch.get_loops(init)[-1])
    for block in [wb, *plan.epilogue]:
        try:
            _vectorize_innermost(sch, sch.get_loops(block)[-1], lanes)
        except Exception:  # noqa: BLE001 - wb was inlined
            continue
    for block in plan.producers:
        _parallel_vectorize_block(sch, block, _lanes(target, _write_dtype_bits(sch, block)))


def _rule_attention(func: tirx.PrimFunc, target: tvm.target.Target) -> s_tir.Schedule | None:
    """The fused attention kernel (:mod:`.attention`): for each (batch, head), in parallel, K^T
    of the head, then for each block of query rows the scores as a register-tiled matmul over
    the key vectors, the softmax of the block (max, fast exp, sum) and the output as a
    register-tiled matmul over head-dim vectors, all while the block's scores are in cache."""
    sch = s_tir.Schedule(func)
    prefix = _attention.BLOCK_PREFIX
    names = {sch.get(b).name_hint: b for b in _root_blocks(sch)}
    if prefix + "out" not in names:
        return None
    qk, row_max, row_sum, pv, out = (names[prefix + n] for n in ("qk", "max", "sum", "pv", "out"))
    (exp,) = [b for n, b in names.items() if not n.startswith(prefix)]  # topi.fast_exp's block
    sch.compute_inline(names[prefix + "logits"])
    sch.compute_inline(names[prefix + "shift"])
    lanes = _attention.LANES
    # Row max and row sum: lane-wise partial results over the keys (rfactor, vectorized below),
    # then across the lanes.
    partials = _lane_partials(sch, (row_max, row_sum), lanes)
    b, i, h, d = sch.get_loops(out)
    rows = _attention.row_block(_extent(sch, i))
    io, ii = sch.split(i, [None, rows])
    sch.reorder(b, h, io, ii, d)
    head_loop = sch.fuse(b, h)
    sch.parallel(head_loop)
    for block in (pv, row_sum, partials[1], exp, row_max, partials[0], qk):
        sch.compute_at(block, io, preserve_unit_loops=True)
    # Each head's K^T once, before its row blocks: [D, L], read from L1 by all of them.
    sch.compute_at(names[prefix + "kt"], head_loop, preserve_unit_loops=True)
    registers = _vector_registers(target)
    # Scores: rows x (u vectors of keys), summed over the head dim.
    *_, q_rows, keys, head = sch.get_loops(qk)
    _attention_micro_kernel(sch, qk, q_rows, keys, head, rows, lanes, registers)
    # Output: rows x (u vectors of the head dim), summed over the keys.
    *_, o_rows, _, o_head, o_keys = sch.get_loops(pv)
    _attention_micro_kernel(sch, pv, o_rows, o_head, o_keys, rows, lanes, registers)
    _vectorize_lane_partials(sch, partials)
    _vectorize_innermost(sch, sch.get_loops(exp)[-1], lanes)
    _vectorize_innermost(sch, sch.get_loops(out)[-1], lanes)
    if prefix + "crop" in names:  # the output without the padding query rows
        _parallel_vectorize_block(sch, names[prefix + "crop"], lanes)
    return sch


def _rule_winograd(func: tirx.PrimFunc, target: tvm.target.Target) -> s_tir.Schedule | None:
    """The Winograd transforms (:mod:`.winograd`): tiles (and channel vectors) in parallel, the
    16 tile positions of the input transform (2x2 of the output transform) unrolled so that the
    position selects fold into each position's adds, channels vectorized. The output transform
    takes the element-wise epilogue that follows it (bias, activation); a kernel may hold one of
    each when the next convolution's input transform was fused behind this one's output."""
    sch = s_tir.Schedule(func)
    names = {sch.get(b).name_hint: b for b in _root_blocks(sch)}
    if _winograd.IN_BLOCK not in names and _winograd.OUT_BLOCK not in names:
        return None
    lanes = _lanes(target, 32)
    done = []
    if _winograd.OUT_BLOCK in names:
        done += _schedule_winograd_out(sch, func, names[_winograd.OUT_BLOCK], lanes)
    if _winograd.IN_BLOCK in names:
        block = names[_winograd.IN_BLOCK]
        positions, tiles, channels = sch.get_loops(block)
        vl = _largest_divisor(_extent(sch, channels), lanes)
        c_outer, c_vec = sch.split(channels, [None, vl])
        sch.reorder(tiles, c_outer, positions, c_vec)
        sch.parallel(sch.fuse(tiles, c_outer))
        sch.unroll(positions)
        sch.vectorize(c_vec)
        done.append(block)
    for other in _root_blocks(sch):  # padding, a layout transpose, an epilogue read twice
        if not any(sch.get(other).same_as(sch.get(d)) for d in done):
            _parallel_vectorize_block(sch, other, _lanes(target, _write_dtype_bits(sch, other)))
    return sch


def _schedule_winograd_out(sch: s_tir.Schedule, func: tirx.PrimFunc, block, lanes: int) -> list:
    """The output transform with its epilogue inlined while each epilogue block reads only the
    result so far (and inputs), is its only reader and has its shape (x * sigmoid(x) reads it
    twice; a padding for the next convolution is larger): those stay blocks of their own."""
    shape = [int(r.extent) for r in sch.get(block).writes[0].region]
    for epilogue in _root_blocks(sch):
        if not _is_consumer_only_of(sch, block, epilogue, func, shape):
            continue
        sch.reverse_compute_inline(epilogue)
    batch, rows, cols, channels = sch.get_loops(block)
    tile_y, in_y = sch.split(rows, [None, _winograd.TILE])
    tile_x, in_x = sch.split(cols, [None, _winograd.TILE])
    vl = _largest_divisor(_extent(sch, channels), lanes)
    c_outer, c_vec = sch.split(channels, [None, vl])
    sch.reorder(batch, tile_y, tile_x, c_outer, in_y, in_x, c_vec)
    sch.parallel(sch.fuse(batch, tile_y, tile_x))
    sch.unroll(in_y)
    sch.unroll(in_x)
    sch.vectorize(c_vec)
    return [block]


def _is_consumer_only_of(sch: s_tir.Schedule, block, candidate, func: tirx.PrimFunc, shape: list[int]) -> bool:
    consumers = sch.get_consumers(block)
    if len(consumers) != 1 or not sch.get(consumers[0]).same_as(sch.get(candidate)):
        return False
    stmt = sch.get(candidate)
    if "R" in _block_iter_kinds(sch, candidate) or [int(iv.dom.extent) for iv in stmt.iter_vars] != shape:
        return False
    current = sch.get(block).writes[0].source
    return all(r.source.same_as(current) or any(r.source.same_as(p) for p in func.params) for r in stmt.reads)


def _attention_micro_kernel(sch: s_tir.Schedule, block, row_loop, vector_loop, reduce_loop, rows: int, lanes: int,
                            registers: int) -> None:
    vectors = _extent(sch, vector_loop) // lanes
    _, u = _register_tile(rows, vectors, registers)
    wb = sch.cache_write(block, 0, "local")
    vo, vu, vv = sch.split(vector_loop, [None, u, lanes])
    sch.reorder(vo, reduce_loop, row_loop, vu, vv)
    sch.reverse_compute_at(wb, vo, preserve_unit_loops=True)
    sch.unroll(row_loop)
    sch.unroll(vu)
    sch.vectorize(vv)
    init = sch.decompose_reduction(block, reduce_loop)
    _vectorize_innermost(sch, sch.get_loops(init)[-1], lanes)
    _vectorize_innermost(sch, sch.get_loops(wb)[-1], lanes)


def _register_tile(rows: int, vectors: int, registers: int) -> tuple[int, int]:
    """(r, u): the micro-kernel of ``r x u`` accumulator vectors (r dividing ``rows``, u dividing
    ``vectors``) that fits the register file with its ``u`` weight vectors and one broadcast
    (``r*u + u + 1 <= registers``), with the most accumulators, then the most rows: each weight
    vector loaded (the streamed operand) is used ``r`` times."""
    best = (0, 0, 1, 1)
    for u in range(min(_MAX_U, vectors), 0, -1):
        if vectors % u:
            continue
        fits = max(1, (registers - 1 - u) // u)
        r = _largest_divisor(rows, min(_MAX_ROWS, fits))
        best = max(best, (r * u, r, r, u))
    return best[2], best[3]


def _compute_epilogue_per_tile(sch: s_tir.Schedule, tile, wb, epilogue) -> None:
    """Write the accumulators back, and compute the epilogue blocks, per output tile (while it
    is hot in cache); the write-back is inlined into the epilogue where it can be. Run before the
    reduction is split into init/update: compute-at needs the reduction block still whole."""
    sch.reverse_compute_at(wb, tile, preserve_unit_loops=True)
    for block in epilogue:
        sch.reverse_compute_at(block, tile, preserve_unit_loops=True)
    if epilogue:
        try:
            sch.compute_inline(wb)
        except Exception:  # noqa: BLE001 - the accumulator's buffer is also a function output
            pass


_RULES = (
    ("winograd", _rule_winograd),
    ("attention", _rule_attention),
    ("int8", _rule_int8),
    ("tiled_reduction", _rule_tiled_reduction),
    ("rows", _rule_rows),
    ("channel_reduction", _rule_channel_reduction),
    ("row_reduction", _rule_row_reduction),
    ("generic", _rule_generic),
)


def schedule_prim_func(func: tirx.PrimFunc, target: tvm.target.Target) -> tuple[tirx.PrimFunc, str]:
    """Schedule one PrimFunc with the first rule that applies; returns (func, rule name)."""
    for name, rule in _RULES:
        try:
            sch = rule(func, target)
        except Exception as exc:  # noqa: BLE001 - a failing rule hands over to the next
            logger.debug("cpu schedule rule %s failed on %s: %s", name, func, exc)
            continue
        if sch is None:
            continue
        new = sch.mod["main"]
        return new.with_attr("tirx.is_scheduled", True), name
    return func, "none"


# The rules with knobs, in the order schedule_prim_func tries them: name -> (plan, rule).
_TUNABLE = {"int8": (int8_plan, _rule_int8), "tiled_reduction": (tiled_plan, _rule_tiled_reduction)}


def tunable_space(func: tirx.PrimFunc, target: tvm.target.Target) -> tuple[str, list[Tile]] | None:
    """The knob-bearing rule the default schedule applies to ``func`` and every :class:`Tile`
    it may take (the default first), or None when the kernel has no knobs (element-wise, row
    reductions)."""
    for name, (plan_of, _) in _TUNABLE.items():
        try:
            plan = plan_of(s_tir.Schedule(func), target)
        except Exception:  # noqa: BLE001 - the rule does not apply
            plan = None
        if plan is not None:
            return name, plan.space()
    return None


def schedule_with_tile(func: tirx.PrimFunc, target: tvm.target.Target, rule: str, tile: Tile) -> s_tir.Schedule:
    """``func`` scheduled by ``rule`` with ``tile``; the schedule's trace replays it (tuning records)."""
    sch = _TUNABLE[rule][1](func, target, tile)
    if sch is None:
        raise ValueError(f"rule {rule} does not apply")
    return sch


def default_cpu_schedule_pass(target: tvm.target.Target, rules: dict[str, str] | None = None) -> tvm.transform.Pass:
    """Schedule every unscheduled PrimFunc of a (legalized, fused) Relax module; ``rules``
    receives kernel name -> the rule that scheduled it."""

    @tvm.transform.module_pass(opt_level=0, name="LeptonDefaultCPUSchedule")
    def _pass(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        updates = {}
        # Kernels that differ only in name are scheduled once: an RNN unrolled over its sequence
        # yields the same step kernel hundreds of times (a 9-GRU model spent minutes here).
        done: dict[int, list[tuple[tirx.PrimFunc, tirx.PrimFunc]]] = {}
        for gv, func in mod.functions_items():
            if not isinstance(func, tirx.PrimFunc) or _is_scheduled(func):
                continue
            anonymous = func.without_attr("global_symbol")
            key = tvm_ffi.structural_hash(anonymous)
            new, rule = next(((scheduled, rule) for original, scheduled, rule in done.get(key, ())
                              if tvm_ffi.structural_equal(original, anonymous)), (None, None))
            if new is None:
                new, rule = schedule_prim_func(func, target)
                done.setdefault(key, []).append((anonymous, new, rule))
            elif "global_symbol" in (func.attrs or {}):
                new = new.with_attr("global_symbol", func.attrs["global_symbol"])
            updates[gv] = new
            if rules is not None:
                rules[gv.name_hint] = rule
        for gv, func in updates.items():
            mod[gv] = func
        return mod

    return _pass


def _pre_schedule_passes(target: tvm.target.Target, values: dict | None = None) -> list[tvm.transform.Pass]:
    """Everything before scheduling: graph passes, legalization and fusion, and the mark on
    each kernel parameter bound to a constant (which the schedules may repack). ``values``
    receives kernel name -> the graph values it computes (see :func:`_record_kernel_values`)."""
    legalize = list(_cpu_pipeline.legalize_passes(target))
    if values is not None:
        fuse_tir = next((i for i, p in enumerate(legalize) if p.info.name == "FuseTIR"), None)
        if fuse_tir is not None:
            before, after = _record_kernel_values(values)
            legalize[fuse_tir:fuse_tir + 1] = [before, legalize[fuse_tir], after]
    return (
        cpu_graph_passes(target)
        + _cpu_pipeline.library_dispatch_passes(target)
        + legalize
        + [_attach_layout_free_buffers()]
    )


def _attach_layout_free_buffers() -> tvm.transform.Pass:
    """TVM's AttachAttrLayoutFreeBuffers (which parameters of each kernel are bound to constants,
    for the schedules to repack), except that a kernel with no such parameter keeps its function as
    it was. The pass copies every kernel, and its copy of a scan with symbolic shapes (a CumSum
    over a dynamic sequence axis: RoBERTa-style position ids) declares the output buffer's layout
    with fresh shape variables, which the build then rejects ("variables (batch, sequence) are
    used, but are not passed in as API arguments"). Kernels are matched by their call sites,
    which the pass keeps in order while it renames the kernels."""

    def calls(mod: tvm.IRModule) -> dict[str, list]:
        return {gv.name_hint: [b.value.args[0] for block in func.body.blocks for b in block.bindings
                               if _is_call_tir(b.value)]
                for gv, func in mod.functions_items() if isinstance(func, relax.Function) and not _is_fused(func)}

    @tvm.transform.module_pass(opt_level=0, name="LeptonAttachAttrLayoutFreeBuffers")
    def _pass(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        out = relax.transform.AttachAttrLayoutFreeBuffers()(mod)
        before = calls(mod)
        for name, kernels in calls(out).items():
            if len(before.get(name, ())) != len(kernels):
                continue
            for old, new in zip(before[name], kernels):
                func = out[new]
                if isinstance(func, tirx.PrimFunc) and not list(func.attrs.get("layout_free_buffers", [])):
                    out[new] = mod[old].with_attr("layout_free_buffers", func.attrs["layout_free_buffers"])
        return out

    return _pass


def _record_kernel_values(values: dict[str, list[str]]) -> tuple[tvm.transform.Pass, tvm.transform.Pass]:
    """Two passes around FuseTIR that fill ``values``: kernel name -> the graph values it
    computes. Before FuseTIR each fused function still holds the bindings it was made of, named
    by the lowering after the ONNX values they compute; FuseTIR makes a kernel of each, named
    after it (a number appended where the name is taken). Bindings do not keep their names
    across FuseTIR, so kernels are matched to fused functions by name."""
    fused_values: dict[str, list[str]] = {}  # fused function -> its values

    @tvm.transform.module_pass(opt_level=0, name="LeptonKernelValuesBeforeFuseTIR")
    def before(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        for gv, func in mod.functions_items():
            if isinstance(func, relax.Function) and _is_fused(func):
                fused_values[gv.name_hint] = [_var_name(b.var) for block in func.body.blocks for b in block.bindings]
        return mod

    @tvm.transform.module_pass(opt_level=0, name="LeptonKernelValuesAfterFuseTIR")
    def after(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        for binding in _graph_bindings(mod):
            if not _is_call_tir(binding.value):
                continue
            kernel = binding.value.args[0].name_hint
            fused = _named_after(kernel, fused_values)
            names = fused_values[fused] if fused is not None else [_var_name(binding.var)]
            found = values.setdefault(kernel, [])
            found.extend(n for n in names if not _AUTO_NAME.fullmatch(n) and n not in found)
        return mod

    return before, after


def _named_after(name: str, names) -> str | None:
    """The one of ``names`` that ``name`` was made from by TVM's renaming (a number appended
    where a name is taken: FuseTIR, the passes after it), the longest if several fit."""
    return max((n for n in names if name.startswith(n) and (name[len(n):] == "" or name[len(n):].isdigit())),
               key=len, default=None)


# Names TVM's block builder makes up (the values of graph passes' own emissions), not the model's.
_AUTO_NAME = re.compile(r"(lv|gv)\d*")


def _is_fused(func: relax.Function) -> bool:
    return func.attrs is not None and "Primitive" in func.attrs


def _graph_bindings(mod: tvm.IRModule):
    for _, func in mod.functions_items():
        if isinstance(func, relax.Function) and not _is_fused(func):
            yield from (b for block in func.body.blocks for b in block.bindings)


def _is_call_tir(value) -> bool:
    return isinstance(value, relax.Call) and value.op.same_as(_CALL_TIR)


def _var_name(var) -> str:
    return str(getattr(var, "name", ""))


_CALL_TIR = tvm.ir.Op.get("relax.call_tir")


def _has_layout_rewrite(func: tirx.PrimFunc) -> bool:
    """Whether a root-level block of ``func`` repacks a weight (where the rules put them)."""
    try:
        sch = s_tir.Schedule(func)
        return any(_LAYOUT_REWRITE in sch.get(b).annotations for b in _root_blocks(sch))
    except Exception:  # noqa: BLE001 - a function with no block structure repacks nothing
        return False


@tvm.transform.module_pass(opt_level=0, name="LeptonSplitWeightPrepack")
def _split_weight_prepack(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
    """TVM's ``SplitLayoutRewritePreproc`` on the kernels that repack a weight. The pass checks
    the block structure of every PrimFunc of the module and rejects kernels it need not touch
    (a scan written as plain loops), so the others are set aside while it runs."""
    aside = {gv: f for gv, f in mod.functions_items()
             if isinstance(f, tirx.PrimFunc) and not _has_layout_rewrite(f)}
    if len(aside) == sum(1 for _, f in mod.functions_items() if isinstance(f, tirx.PrimFunc)):
        return mod
    part = tvm.IRModule({gv: f for gv, f in mod.functions_items() if gv not in aside}, attrs=mod.attrs)
    part = relax.transform.SplitLayoutRewritePreproc()(part)
    for gv, func in aside.items():
        part[gv] = func
    return part


def _post_schedule_passes() -> list[tvm.transform.Pass]:
    """The weight repacking blocks become functions of their own, evaluated at build time."""
    return [_split_weight_prepack, relax.transform.FoldConstant()]


def schedule_module(mod: tvm.IRModule, target: tvm.target.Target) -> tvm.IRModule:
    """The Relax module after graph passes, legalization and scheduling (before lowering)."""
    with target:
        seq = tvm.transform.Sequential(
            _pre_schedule_passes(target) + [default_cpu_schedule_pass(target)]
        )
        return seq(mod)


def apply_records_pass(database, stats: dict | None = None) -> tvm.transform.Pass:
    """Schedule the kernels that have a tuning record in ``database`` (a MetaSchedule database,
    see :mod:`.records`) with their best record; ``stats`` receives ``tuned`` and ``kernels``."""

    @tvm.transform.module_pass(opt_level=0, name="LeptonApplyTuningRecords")
    def _pass(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        kernels = [gv for gv, f in mod.functions_items() if isinstance(f, tirx.PrimFunc)]
        before = {gv.name_hint for gv in kernels if _is_scheduled(mod[gv])}
        with database:
            mod = relax.transform.MetaScheduleApplyDatabase()(mod)
        if stats is not None:
            tuned = [gv.name_hint for gv, f in mod.functions_items() if isinstance(f, tirx.PrimFunc)
                     and _is_scheduled(f) and gv.name_hint not in before]
            stats["kernels"] = len(kernels)
            stats["tuned"] = len(tuned)
            stats.setdefault("rules", {}).update(dict.fromkeys(tuned, "tuned"))
        return mod

    return _pass


def kernel_info_pass(info: dict[str, dict], rules: dict[str, str], values: dict) -> tvm.transform.Pass:
    """Record, per kernel of a scheduled module (before it is lowered to the VM): the rule that
    scheduled it, its floating-point operation count (TVM's estimate), the bytes of its
    arguments (static shapes only: the least it must move) and the graph values it computes
    (the lowering's names for them: the ONNX value names). Kernel profiles read these."""

    @tvm.transform.module_pass(opt_level=0, name="LeptonKernelInfo")
    def _pass(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        called = {b.value.args[0].name_hint for b in _graph_bindings(mod) if _is_call_tir(b.value)}
        for gv, func in mod.functions_items():
            if not isinstance(func, tirx.PrimFunc) or gv.name_hint not in called:
                continue  # weight-repacking kernels, evaluated at build time
            nbytes = _argument_bytes(func)
            flops, note = None, None  # a kernel with a shape known at run time only has no fixed count
            if nbytes is not None:
                try:
                    flops = int(s_tir.analysis.estimate_tir_flops(tvm.IRModule({gv: func})))
                except Exception as e:  # noqa: BLE001 - TVM cannot count this kernel's loops: said in the facts
                    note = f"no FLOP count: {first_line(e, with_type=True)}"
            origin = gv.name_hint.removesuffix(_PREPACKED)  # the kernel before its weight was repacked
            fused = _named_after(origin, values)
            info[gv.name_hint] = {"rule": rules.get(origin, rules.get(gv.name_hint)), "flops": flops,
                                  "bytes": nbytes, "values": values[fused] if fused else []}
            if note:
                info[gv.name_hint]["note"] = note
        return mod

    return _pass


_PREPACKED = "_prepacked"  # SplitLayoutRewritePreproc's name for a kernel that reads a repacked weight


def _argument_bytes(func: tirx.PrimFunc) -> int | None:
    total = 0
    for param in func.params:
        ty = getattr(param, "ty", None)
        shape, dtype = getattr(ty, "shape", None), getattr(ty, "dtype", None)
        if shape is None or dtype is None or not all(isinstance(d, tirx.IntImm) for d in shape):
            return None
        total += int(np.prod([int(d) for d in shape], dtype=np.int64)) * _dtype_bits(dtype) // 8
    return total


def cpu_pipeline(target: tvm.target.Target, database=None, stats: dict | None = None) -> tvm.transform.Pass:
    """The whole Relax pipeline of :func:`build_cpu`, as one pass. ``stats`` receives the
    tuning counts and ``kernel_info`` (see :func:`kernel_info_pass`)."""

    @tvm.transform.module_pass(opt_level=0, name="LeptonCPUPipeline")
    def _pipeline(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        with target:
            tuned = [] if database is None else [apply_records_pass(database, stats)]
            rules = stats.setdefault("rules", {}) if stats is not None else None
            values: dict | None = {} if stats is not None else None
            info = [] if stats is None else [kernel_info_pass(stats.setdefault("kernel_info", {}), rules, values)]
            seq = tvm.transform.Sequential(
                _pre_schedule_passes(target, values)
                + tuned
                + [default_cpu_schedule_pass(target, rules)]
                + _post_schedule_passes()
                + info
                + _cpu_pipeline.dataflow_lower_passes(target)
                + _cpu_pipeline.finalize_passes(target)
            )
            return seq(mod)

    return _pipeline


def build_cpu(mod: tvm.IRModule, target: tvm.target.Target, database=None,
              stats: dict | None = None) -> tvm.runtime.Executable:
    """Compile a Relax module for a CPU target: kernels with a tuning record in ``database``
    take their best record, the others the default schedules."""
    return tvm.compile(mod, target=target, relax_pipeline=cpu_pipeline(target, database, stats))


def _dtype_bits(dtype) -> int:
    bits = getattr(dtype, "bits", None)
    if bits is None:
        bits = tvm.DataType(str(dtype)).bits
    return int(bits)
