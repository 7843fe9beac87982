"""Which weights can be pruned, and the element-wise methods: magnitude and 2:4.

A prunable weight is an initializer used by exactly one node as the weight of a Conv,
ConvTranspose, Gemm or 2-D MatMul. Its *reduction axis* is the one the layer sums over: the
input channels of a Conv (axis 1) or ConvTranspose (axis 0), K of a MatMul weight [K, N]
(axis 0) or of a Gemm B (axis 0, or 1 with transB=1). 2:4 groups run along it, as sparse
tensor cores read them.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from collections.abc import Mapping, Sequence

import numpy as np
import onnx_ir as ir

WEIGHT_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


@dataclasses.dataclass
class PrunableWeight:
    node: ir.Node
    value: ir.Value  # the initializer
    reduction_axis: int

    @property
    def name(self) -> str:
        return self.value.name

    @property
    def array(self) -> np.ndarray:
        return self.value.const_value.numpy()


def prunable_weights(model: ir.Model, layers: Sequence[str] | None = None) -> list[PrunableWeight]:
    """Weights of ``WEIGHT_OPS`` that are float initializers used by that node alone.

    ``layers`` keeps only weights whose node name or initializer name matches one of the
    shell-style patterns."""
    found = []
    for node in model.graph:
        if node.op_type not in WEIGHT_OPS or node.domain not in ("", "ai.onnx") or len(node.inputs) < 2:
            continue
        value = node.inputs[1]
        if value is None or value.const_value is None or not value.is_initializer() or len(value.uses()) != 1:
            continue
        array_dtype = value.const_value.dtype
        if array_dtype not in (ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.DOUBLE, ir.DataType.BFLOAT16):
            continue
        rank = len(value.const_value.shape)
        if node.op_type in ("Conv", "ConvTranspose") and rank < 3:
            continue
        if node.op_type in ("Gemm", "MatMul") and rank != 2:
            continue
        if layers and not any(fnmatch.fnmatchcase(n, p) for p in layers for n in (node.name or "", value.name)):
            continue
        found.append(PrunableWeight(node, value, _reduction_axis(node)))
    return found


def _reduction_axis(node: ir.Node) -> int:
    if node.op_type == "Conv":
        return 1
    if node.op_type == "ConvTranspose":
        return 0
    if node.op_type == "Gemm":
        trans_b = node.attributes.get("transB")
        return 1 if trans_b is not None and trans_b.as_int() else 0
    return 0  # MatMul x @ W with W [K, N]


def set_weight(weight: PrunableWeight, array: np.ndarray) -> None:
    weight.value.const_value = ir.tensor(np.ascontiguousarray(array), name=weight.value.name)


def magnitude_masks(weights: Sequence[PrunableWeight], ratios: Mapping[str, float],
                    global_ratio: float | None = None) -> dict[str, np.ndarray]:
    """Keep-masks zeroing the smallest-magnitude entries.

    With ``global_ratio``, one threshold over all ``weights`` zeroes exactly that share of their
    entries together (layers with small weights lose more); else each weight loses its own
    ``ratios[name]`` share. Ties are broken by position, so the counts are exact."""
    if global_ratio is not None:
        flat = np.concatenate([np.abs(w.array.astype(np.float64)).ravel() for w in weights])
        count = int(round(global_ratio * flat.size))
        drop = np.zeros(flat.size, dtype=bool)
        drop[np.argsort(flat, kind="stable")[:count]] = True
        masks, start = {}, 0
        for w in weights:
            size = w.array.size
            masks[w.name] = ~drop[start:start + size].reshape(w.array.shape)
            start += size
        return masks
    masks = {}
    for w in weights:
        ratio = ratios.get(w.name, 0.0)
        magnitude = np.abs(w.array.astype(np.float64)).ravel()
        keep = np.ones(magnitude.size, dtype=bool)
        keep[np.argsort(magnitude, kind="stable")[:int(round(ratio * magnitude.size))]] = False
        masks[w.name] = keep.reshape(w.array.shape)
    return masks


def two_four_mask(array: np.ndarray, axis: int) -> np.ndarray | None:
    """Keep-mask with the 2 largest-magnitude entries of every 4 consecutive ones along ``axis``;
    None when that axis is not a multiple of 4."""
    if array.shape[axis] % 4:
        return None
    moved = np.moveaxis(np.abs(array.astype(np.float64)), axis, -1)
    groups = moved.reshape(*moved.shape[:-1], moved.shape[-1] // 4, 4)
    order = np.argsort(groups, axis=-1, kind="stable")  # ascending: the first two are dropped
    keep = np.ones(groups.shape, dtype=bool)
    np.put_along_axis(keep, order[..., :2], False, axis=-1)
    return np.moveaxis(keep.reshape(moved.shape), -1, axis)


def two_four_violations(array: np.ndarray, axis: int) -> int:
    """Groups of 4 along ``axis`` with fewer than 2 zeros (0 means the 2:4 pattern holds)."""
    moved = np.moveaxis(array, axis, -1)
    groups = moved.reshape(*moved.shape[:-1], moved.shape[-1] // 4, 4)
    return int(((groups == 0).sum(axis=-1) < 2).sum())
