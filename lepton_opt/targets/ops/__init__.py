"""The op table: ONNX op type -> converter.

Our own converters (elementwise, nn, tensor, rnn, control, signal, and fused: ops only the fusion
passes produce) come first; op types we have not written yet fall back to TVM's reference
importer one op at a time (:mod:`.reference`).
"""

from __future__ import annotations

from lepton_opt.targets.lower import Converter
from lepton_opt.targets.ops import control, elementwise, fused, nn, quant, rnn, signal, tensor
from lepton_opt.targets.ops.reference import reference_converters

OWN_CONVERTERS: dict[str, Converter] = {**elementwise.CONVERTERS, **nn.CONVERTERS, **tensor.CONVERTERS,
                                        **rnn.CONVERTERS, **control.CONVERTERS, **fused.CONVERTERS,
                                        **quant.CONVERTERS, **signal.CONVERTERS}
OWN_CONVERTERS["Attention"] = nn.attention_with_fast_path(fused.CONVERTERS["Attention"])
# Quantized models: integer kernels where the inputs are quantized (see quant.py), else float.
OWN_CONVERTERS["Conv"] = quant.integer_first(nn.Conv, quant.conv)
OWN_CONVERTERS["MatMul"] = quant.integer_first(nn.MatMul, quant.matmul)
OWN_CONVERTERS["Gemm"] = quant.integer_first(nn.Gemm, quant.gemm)


def converter_table() -> dict[str, Converter]:
    """Every op type the lowering accepts: ours, then the reference importer's for the rest.
    Not the reference importer's NonMaxSuppression: it lowered but did not build ("T_gather is
    used before its definition"), which failed the whole model; without a lowering it runs in
    onnxruntime (a partitioned artifact)."""
    exclude = set(OWN_CONVERTERS) | {"NonMaxSuppression"}
    return {**reference_converters(exclude=exclude), **OWN_CONVERTERS}
