#!/usr/bin/env python3
"""Zoo producer "ortools": zoo exports as onnxruntime's own tools rewrite them.

Deployed models often are not an exporter's output but what onnxruntime's tools made of it: the
transformers optimizer (com.microsoft ``Attention``, ``EmbedLayerNormalization``,
``SkipLayerNormalization``, ``BiasGelu``, written without their opset import), its float16
converter (float16 weights, with or without float16 inputs), and the quantizer (QDQ and QOperator
int8 with ``QGemm``/``QLinearConv``, dynamic int8 with ``MatMulInteger``, weight-only 4-bit with
``MatMulNBits``/``GatherBlockQuantized`` or block-wise int4 ``DequantizeLinear``). Each model here is one of
those tools applied to another producer's export already in the output folder (export the torch
models first: ``python benchmarks/zoo.py --producers torch``); a missing base is skipped.

Usage: python benchmarks/zoo/export_ortools.py --out DIR [--only a,b] [--list] [--force]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime

from _exporter_cli import run

VERSION = f"onnxruntime=={onnxruntime.__version__}"


def _optimized(base: Path, fp16: bool):
    from onnxruntime.transformers import optimizer

    # opt_level 0: the Python fusions only (level 1 runs onnxruntime's optimizer, which imports torch)
    model = optimizer.optimize_model(str(base), model_type="bert", num_heads=4, hidden_size=128, opt_level=0)
    if fp16:
        model.convert_float_to_float16(keep_io_types=True)
    return model.model


def _float16(base: Path):
    from onnxruntime.transformers.float16 import convert_float_to_float16

    return convert_float_to_float16(onnx.load(base), keep_io_types=False)


def _calibration(spec: dict, count: int = 8):
    """Seeded inputs the way the zoo draws them, for static quantization's calibration."""
    rng = np.random.default_rng(1)
    for _ in range(count):
        yield {name: rng.uniform(info["low"], info["high"], info["shape"]).astype(info["dtype"])
               for name, info in spec["inputs"].items()}


def _static(base: Path, spec: dict, fmt: str, out: Path):
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.feeds = iter(_calibration(spec))

        def get_next(self):
            return next(self.feeds, None)

    # QOperator with uint8 activations (the ONNX model zoo's -int8 models), QDQ with int8 ones
    quantize_static(str(base), str(out), Reader(), quant_format=getattr(QuantFormat, fmt), per_channel=True,
                    activation_type=QuantType.QUInt8 if fmt == "QOperator" else QuantType.QInt8,
                    weight_type=QuantType.QInt8)


def _weight_only_4bit(base: Path, fmt: str, symmetric: bool):
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer
    from onnxruntime.quantization.quant_utils import QuantFormat

    # the embedding table too in QOperator form (GatherBlockQuantized); QDQ quantizes MatMuls only
    types = ("MatMul", "Gather") if fmt == "QOperator" else ("MatMul",)
    config = DefaultWeightOnlyQuantConfig(block_size=32, is_symmetric=symmetric, op_types_to_quantize=types,
                                          quant_format=getattr(QuantFormat, fmt))
    quantizer = MatMulNBitsQuantizer(onnx.load(base), algo_config=config)
    quantizer.process()
    return quantizer.model.model


def _dynamic(base: Path, out: Path):
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(base), str(out), weight_type=QuantType.QInt8)


# name -> (base model, tool, what it did)
MODELS = {
    "bert_eager_ts14_ortopt": ("bert_eager_ts14", "transformers-optimizer",
                               "onnxruntime.transformers optimizer (bert, opt_level 0): Attention, "
                               "EmbedLayerNormalization, SkipLayerNormalization, BiasGelu; no com.microsoft import"),
    "bert_eager_ts14_ortopt_fp16": ("bert_eager_ts14", "transformers-optimizer",
                                    "as bert_eager_ts14_ortopt, then convert_float_to_float16(keep_io_types=True)"),
    "resnet18_ts11_fp16": ("resnet18_ts11", "float16", "convert_float_to_float16(keep_io_types=False): float16 I/O"),
    "mobilenet_v3_small_dynamo_fp16": ("mobilenet_v3_small_dynamo", "float16",
                                       "convert_float_to_float16(keep_io_types=False): float16 I/O"),
    "hf_vit_dynamo_fp16": ("hf_vit_dynamo", "float16", "convert_float_to_float16(keep_io_types=False): float16 I/O"),
    "resnet18_ts11_qoperator": ("resnet18_ts11", "quantize-static",
                                "quantize_static QOperator, per-channel int8 weights, uint8 activations: "
                                "QLinearConv, QLinearAdd, QLinearGlobalAveragePool, QGemm (opset 11)"),
    "mobilenet_v3_small_dynamo_qdq": ("mobilenet_v3_small_dynamo", "quantize-static",
                                      "quantize_static QDQ, per-channel int8 weights and activations"),
    "mobilenet_v3_small_dynamo_qoperator": ("mobilenet_v3_small_dynamo", "quantize-static",
                                            "quantize_static QOperator, per-channel int8 weights, uint8 activations"),
    "llama_dynamo_q4": ("llama_dynamo", "weight-only-4bit",
                        "MatMulNBitsQuantizer QOperator, asymmetric 4-bit, block 32: MatMulNBits, "
                        "GatherBlockQuantized (the q4 LLM exports)"),
    "bert_sdpa_dynamo_op23_q4_qdq": ("bert_sdpa_dynamo_op23", "weight-only-4bit",
                                     "MatMulNBitsQuantizer QDQ, symmetric 4-bit, block 32: int4 weights read "
                                     "through block-wise DequantizeLinear"),
    "bert_eager_ts14_dynq": ("bert_eager_ts14", "quantize-dynamic",
                             "quantize_dynamic int8 weights: DynamicQuantizeLinear, MatMulInteger"),
    "distilbert_ts14_dynq": ("distilbert_ts14", "quantize-dynamic",
                             "quantize_dynamic int8 weights: DynamicQuantizeLinear, MatMulInteger"),
}


def export_one(name: str, out: Path, force: bool) -> None:
    target, meta_path = out / f"{name}.onnx", out / f"{name}.json"
    if target.exists() and meta_path.exists() and not force:
        return
    base_name, tool, what = MODELS[name]
    base, base_meta = out / f"{base_name}.onnx", out / f"{base_name}.json"
    if not base.exists() or not base_meta.exists():
        raise FileNotFoundError(f"base model {base_name} is not exported yet (export the torch producer first)")
    spec = json.loads(base_meta.read_text())
    if tool == "transformers-optimizer":
        onnx.save(_optimized(base, fp16=name.endswith("_fp16")), target)
    elif tool == "float16":
        onnx.save(_float16(base), target)
        for info in spec["inputs"].values():
            if info["dtype"] == "float32":
                info["dtype"] = "float16"
    elif tool == "quantize-static":
        _static(base, spec, "QOperator" if name.endswith("_qoperator") else "QDQ", target)
    elif tool == "weight-only-4bit":
        onnx.save(_weight_only_4bit(base, "QDQ" if name.endswith("_qdq") else "QOperator",
                                    symmetric=name.endswith("_qdq")), target)
    else:
        _dynamic(base, target)
    model = onnx.load(target)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    meta = {"name": name, "producer": f"ortools:{tool}:{VERSION}", "producer_version": VERSION,
            "architecture": f"{spec.get('architecture', base_name)}, as onnxruntime's {tool} left it",
            "task": spec.get("task", ""), "opset": opset, "inputs": spec["inputs"],
            "notes": f"from zoo model {base_name}: {what}; {len(model.graph.node)} nodes"}
    meta_path.write_text(json.dumps(meta, indent=1) + "\n")


if __name__ == "__main__":
    sys.exit(run("Zoo models rewritten by onnxruntime's tools", MODELS, export_one))
