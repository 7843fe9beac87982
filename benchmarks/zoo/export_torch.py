#!/usr/bin/env python3
"""Zoo producers "torch-torchscript" and "torch-dynamo": PyTorch models exported with torch.onnx.export.

Two exporters live in one torch install, so one script covers both:

* "torch-torchscript": ``torch.onnx.export(..., dynamo=False)``, the TorchScript-tracing exporter that most
  published ONNX models (and optimum) came from; the opset is chosen per model (11, 13, 14, 17).
* "torch-dynamo": ``torch.onnx.export(..., dynamo=True)``, the torch.export + onnxscript exporter that is the
  default in current torch, with its default opset (20 in torch 2.14; 23 on two models, where SDPA becomes
  the ONNX Attention op) and its default ``optimize=True`` pass.

Architectures are the real library classes with seeded random weights (nothing downloaded): torchvision
classifiers / segmentation / detection (``weights=None``), timm (``pretrained=False``) and transformers models
built from small configs in code (``Model(config)``, never ``from_pretrained``), plus a streaming LSTM
keyword-spotting net and two models with data-dependent control flow (torch.cond -> If, a scripted loop ->
Loop). Dynamic batch / sequence axes are declared the way users declare them (``dynamic_axes`` for
TorchScript, ``dynamic_shapes`` with ``torch.export.Dim`` for dynamo). Beside the hand-picked models, the
"families" tables (``TIMM_FAMILIES``, the ``_hf_family`` calls) take one model of each of 60 timm architecture
families and 30 transformers model classes, for breadth: the exports that failed in torch itself are left out
(a comment names them).

One deviation from the dynamo defaults: ``external_data=False``. With the default (True) torch writes every
model's weights into ``NAME.onnx.data`` whatever its size; the zoo keeps single-file models below 2 GB. The
graph is the same either way.

Usage (inside the venv from requirements-torch.txt):
    python benchmarks/zoo/export_torch.py --out DIR [--only a,b] [--list] [--force]
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")  # the wheel is a CUDA build; export on the CPU
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # configs are built in code: nothing may reach a hub

import torch  # noqa: E402
from torch import nn  # noqa: E402

from _exporter_cli import dims_note, run  # noqa: E402

torch.set_num_threads(2)
warnings.filterwarnings("ignore")


# ------------------------------------------------------------------------------ input specs
def f32(shape, low=-2.0, high=2.0):
    return {"shape": list(shape), "dtype": "float32", "low": low, "high": high}


def ids(shape, vocab):
    return {"shape": list(shape), "dtype": "int64", "low": 0, "high": vocab}


def mask(shape):
    """A 0/1 padding mask: ones with the tail zeroed (the zoo driver's "values": "mask")."""
    return {"shape": list(shape), "dtype": "int64", "low": 0, "high": 2, "values": "mask"}


def example_tensor(spec: dict, shape: list[int]) -> torch.Tensor:
    dtype = getattr(torch, spec["dtype"])
    if spec.get("values") == "mask":
        t = torch.ones(shape, dtype=dtype)
        t[..., shape[-1] - max(1, shape[-1] // 4):] = 0
        return t
    if dtype.is_floating_point:
        return torch.empty(shape, dtype=dtype).uniform_(spec["low"], spec["high"])
    return torch.randint(int(spec["low"]), int(spec["high"]), shape, dtype=dtype)


# ------------------------------------------------------------------------------ model table
@dataclass
class Model:
    exporter: str  # "torchscript" or "dynamo"
    build: Callable[[], nn.Module]
    architecture: str
    task: str
    inputs: dict  # graph input name -> zoo input spec (concrete shape to run with)
    dynamic: dict = field(default_factory=dict)  # input name -> {axis: dim name}
    opset: int | None = None  # None: the exporter's default
    outputs: list[str] | None = None
    hf: bool = False  # a transformers model: called with keyword inputs, ModelOutput flattened
    notes: str = ""


def liven(model: nn.Module) -> nn.Module:
    """Seeded stand-ins for trained statistics. torchvision's fresh init leaves BatchNorm at identity stats and
    zero-initialises some layers (the ViT head), so e.g. efficientnet_b0 outputs ~1e-14 and the ViT exactly 0:
    useless for comparing a compiler with onnxruntime. Random BatchNorm affine / running stats (what folding
    sees in a trained model) and small random values in place of all-zero weights fix that."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.rand(m.bias.shape, generator=g) * 0.4 - 0.2)
                m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=g) * 0.4 - 0.2)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) * 1.5 + 0.5)
        for p in model.parameters():
            if p.dim() >= 2 and not p.any():
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    return model


def tv(name: str, **kw):
    import torchvision

    return lambda: liven(torchvision.models.get_model(name, weights=None, **kw))


def timm_model(name: str, **kw):
    def build():
        import timm

        return timm.create_model(name, pretrained=False, **kw)

    return build


def hf(cls_name: str, config_name: str, attn: str | None = None, part: str | None = None, **config):
    """A transformers model from a small config built in code (random init, seeded by the caller)."""

    def build():
        import transformers

        cfg = getattr(transformers, config_name)(**config)
        kwargs = {"attn_implementation": attn} if attn else {}
        model = getattr(transformers, cls_name)._from_config(cfg, **kwargs)
        return model.get_encoder() if part == "encoder" else model

    return build


class KeywordSpotter(nn.Module):
    """Streaming keyword-spotting net: Conv1d front end over log-mel frames, a 2-layer LSTM whose state is
    passed in and out (h0/c0 -> hn/cn) so that an app can feed audio chunk by chunk, and a classifier."""

    def __init__(self, mels=40, hidden=64, classes=12):
        super().__init__()
        self.front = nn.Sequential(
            nn.Conv1d(mels, 64, 5, padding=2), nn.BatchNorm1d(64), nn.ReLU(),
            nn.Conv1d(64, 64, 3, stride=2, padding=1), nn.BatchNorm1d(64), nn.ReLU())
        self.lstm = nn.LSTM(64, hidden, num_layers=2, batch_first=True)
        self.head = nn.Linear(hidden, classes)

    def forward(self, mel, h0, c0):  # mel [B, T, mels]
        x = self.front(mel.transpose(1, 2)).transpose(1, 2)
        y, (hn, cn) = self.lstm(x, (h0, c0))
        return self.head(y).log_softmax(-1), hn, cn


class GatedBlock(nn.Module):
    """Data-dependent branch through torch.cond (exported as ONNX If): a cheap path for low-energy input,
    a deeper one otherwise, as in early-exit / voice-activity gated models."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.cheap = nn.Conv2d(16, 16, 1)
        self.deep = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1))
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        h = self.stem(x).relu()
        h = torch.cond(h.mean() > 0.5, lambda t: self.deep(t) + t, lambda t: self.cheap(t), (h,))
        return self.head(h.mean((2, 3)))


class _LoopCell(nn.Module):
    def __init__(self, dim=32):
        super().__init__()
        self.inp = nn.Linear(dim, dim)
        self.rec = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # a hand-written recurrence over the (dynamic) time axis: scripted, it becomes an ONNX Loop
        h = torch.zeros(x.size(0), x.size(2), dtype=x.dtype)
        for t in range(x.size(1)):
            h = torch.tanh(self.inp(x[:, t]) + self.rec(h))
        return self.out(h)


def scripted_loop():
    torch.manual_seed(0)
    return torch.jit.script(_LoopCell().eval())


class SingleImageDetector(nn.Module):
    """torchvision detectors take a list of CHW images and return a list of dicts; deployments export them
    for one image at a time, as here."""

    def __init__(self, detector: nn.Module):
        super().__init__()
        self.detector = detector

    def forward(self, image):
        out = self.detector([image])[0]
        return out["boxes"], out["scores"], out["labels"]


def ssdlite():
    import torchvision

    # a low score threshold so that the randomly initialised detector still returns boxes
    return SingleImageDetector(liven(torchvision.models.detection.ssdlite320_mobilenet_v3_large(
        weights=None, weights_backbone=None, score_thresh=0.001)))


class LastFlow(nn.Module):
    """torchvision's RAFT returns the list of every refinement's flow; deployments keep the last one and fix
    the number of refinement steps (4 here instead of 12: the same graph, unrolled fewer times)."""

    def __init__(self, raft: nn.Module, updates: int = 4):
        super().__init__()
        self.raft, self.updates = raft, updates

    def forward(self, image1, image2):
        return self.raft(image1, image2, num_flow_updates=self.updates)[-1]


def raft_small():
    import torchvision

    return LastFlow(liven(torchvision.models.optical_flow.raft_small(weights=None)))


def fasterrcnn_mbv3():
    import torchvision

    # the low score threshold keeps boxes coming out of the random detector (as for SSDlite)
    model = liven(torchvision.models.detection.fasterrcnn_mobilenet_v3_large_320_fpn(
        weights=None, weights_backbone=None, box_score_thresh=0.001))
    # torchvision initialises the RPN and box-predictor layers with std 0.01 / 0.001: every objectness is ~0.5
    # and every class score ~1/91, so TopK / NMS would pick among near-ties that float rounding reorders (the
    # SSDlite row's mismatch). Spread them, as training does, so that the comparison means something.
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for layer, scale in ((model.rpn.head.cls_logits, 1.0), (model.rpn.head.bbox_pred, 0.1),
                             (model.roi_heads.box_predictor.cls_score, 3.0),
                             (model.roi_heads.box_predictor.bbox_pred, 0.05)):
            layer.weight.copy_(torch.randn(layer.weight.shape, generator=g) * scale)
            layer.bias.copy_(torch.randn(layer.bias.shape, generator=g) * scale)
    return SingleImageDetector(model)


class StyleSR(nn.Module):
    """Image-to-image net in the style of fast neural style transfer and ESPCN/ESRGAN-type super-resolution:
    reflection padding, InstanceNorm2d (affine), residual blocks with GroupNorm, a bilinear (align_corners)
    resize, PixelShuffle x2 upsampling and a nearest upsample, tanh output."""

    def __init__(self, ch=32):
        super().__init__()

        def conv(i, o, k, s=1):
            return nn.Sequential(nn.ReflectionPad2d(k // 2), nn.Conv2d(i, o, k, s))

        self.head = nn.Sequential(conv(3, ch, 9), nn.InstanceNorm2d(ch, affine=True), nn.ReLU(),
                                  conv(ch, ch * 2, 3, 2), nn.InstanceNorm2d(ch * 2, affine=True), nn.ReLU())
        self.blocks = nn.ModuleList(
            nn.Sequential(conv(ch * 2, ch * 2, 3), nn.GroupNorm(8, ch * 2), nn.SiLU(), conv(ch * 2, ch * 2, 3),
                          nn.GroupNorm(8, ch * 2)) for _ in range(2))
        self.shuffle = nn.Sequential(nn.Conv2d(ch * 2, ch * 4, 3, padding=1), nn.PixelShuffle(2), nn.PReLU(ch))
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.tail = nn.Sequential(conv(ch, 16, 3), nn.LeakyReLU(0.2), conv(16, 3, 9))

    def forward(self, x):
        h = self.head(x)
        for block in self.blocks:
            h = h + block(h)
        h = h + nn.functional.interpolate(h.mean(1, keepdim=True), size=h.shape[-2:], mode="bilinear",
                                          align_corners=True)
        h = self.shuffle(h)  # back to the input resolution
        return torch.tanh(self.tail(self.up(h)))  # x2 super-resolved


def style_sr():
    g = torch.Generator().manual_seed(0)
    model = StyleSR()
    with torch.no_grad():  # affine norms away from their identity init, as trained ones are
        for m in model.modules():
            if isinstance(m, (nn.InstanceNorm2d, nn.GroupNorm)):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.rand(m.bias.shape, generator=g) * 0.4 - 0.2)
    return model


class STN(nn.Module):
    """Spatial transformer network (the PyTorch tutorial's MNIST model): a localisation CNN regresses a 2x3
    affine matrix, F.affine_grid + F.grid_sample resample the input, then a small classifier."""

    def __init__(self):
        super().__init__()
        self.loc = nn.Sequential(nn.Conv2d(1, 8, 7), nn.MaxPool2d(2), nn.ReLU(), nn.Conv2d(8, 10, 5),
                                 nn.MaxPool2d(2), nn.ReLU())
        self.fc_loc = nn.Sequential(nn.Linear(10 * 3 * 3, 32), nn.ReLU(), nn.Linear(32, 6))
        with torch.no_grad():  # near the identity transform, as the tutorial initialises it
            self.fc_loc[2].weight.mul_(0.1)
            self.fc_loc[2].bias.copy_(torch.tensor([1.0, 0.1, 0.05, -0.1, 0.9, 0.0]))
        self.cls = nn.Sequential(nn.Conv2d(1, 10, 5), nn.MaxPool2d(2), nn.ReLU(), nn.Conv2d(10, 20, 5),
                                 nn.MaxPool2d(2), nn.ReLU(), nn.Flatten(), nn.Linear(320, 10))

    def forward(self, x):
        theta = self.fc_loc(self.loc(x).flatten(1)).view(-1, 2, 3)
        grid = nn.functional.affine_grid(theta, list(x.shape), align_corners=False)
        x = nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        # the warped image too: the random classifier's log-probabilities alone are nearly uniform
        return self.cls(x).log_softmax(-1), x


class MelCNN(nn.Module):
    """Audio classifier with its feature extraction in the graph: torch.stft (Hann window, 25 ms / 10 ms at
    16 kHz), power spectrum, a mel filterbank matmul, log, then a small CNN."""

    def __init__(self, n_fft=400, hop=160, mels=40, classes=10):
        super().__init__()
        self.n_fft, self.hop = n_fft, hop
        self.register_buffer("window", torch.hann_window(n_fft))
        g = torch.Generator().manual_seed(0)
        self.register_buffer("mel", torch.rand(n_fft // 2 + 1, mels, generator=g) / n_fft)
        self.net = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
                                 nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                                 nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, classes))

    def forward(self, wave):  # [B, samples]
        spec = torch.stft(wave, self.n_fft, self.hop, window=self.window, center=True, return_complex=True)
        power = spec.abs().pow(2).transpose(1, 2)  # [B, frames, bins]
        logmel = torch.log(power @ self.mel + 1e-6)
        return self.net(logmel.unsqueeze(1))


class UNet3D(nn.Module):
    """A small 3-D U-Net as in volumetric segmentation (MONAI/nnU-Net style): Conv3d + InstanceNorm3d +
    LeakyReLU blocks, MaxPool3d down, ConvTranspose3d and trilinear Upsample up, skip concatenations."""

    def __init__(self, ch=8, classes=3):
        super().__init__()

        def block(i, o):
            return nn.Sequential(nn.Conv3d(i, o, 3, padding=1), nn.InstanceNorm3d(o, affine=True),
                                 nn.LeakyReLU(0.01), nn.Conv3d(o, o, 3, padding=1),
                                 nn.InstanceNorm3d(o, affine=True), nn.LeakyReLU(0.01))

        self.enc1, self.enc2, self.enc3 = block(1, ch), block(ch, ch * 2), block(ch * 2, ch * 4)
        self.pool = nn.MaxPool3d(2)
        self.up2 = nn.ConvTranspose3d(ch * 4, ch * 2, 2, stride=2)
        self.dec2 = block(ch * 4, ch * 2)
        self.up1 = nn.Upsample(scale_factor=2, mode="trilinear", align_corners=False)
        self.dec1 = block(ch * 3, ch)
        self.out = nn.Conv3d(ch, classes, 1)

    def forward(self, x):
        e1 = self.enc1(x)
        e2 = self.enc2(self.pool(e1))
        e3 = self.enc3(self.pool(e2))
        d2 = self.dec2(torch.cat([self.up2(e3), e2], 1))
        d1 = self.dec1(torch.cat([self.up1(d2), e1], 1))
        return self.out(d1).softmax(1)


def unet3d():
    g = torch.Generator().manual_seed(0)
    model = UNet3D()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.InstanceNorm3d):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.rand(m.bias.shape, generator=g) * 0.4 - 0.2)
    return model


VOCAB = 1000
LLAMA = dict(vocab_size=VOCAB, hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=128, use_cache=False, pad_token_id=0)
LLAMA_KV_HEADS, LLAMA_HEAD_DIM = 2, 128 // 4


class DecoderWithPast(nn.Module):
    """One decoding step of a causal LM with its KV cache as graph inputs and outputs, the way optimum /
    onnxruntime-genai export decoders ("decoder_with_past"): input_ids [B, S], attention_mask [B, P+S],
    position_ids [B, S], past key/value [B, kv_heads, P, head_dim] per layer -> logits and the present
    key/values [B, kv_heads, P+S, head_dim]. Two layers, so the arguments are spelled out (torch.export
    takes no *args)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, position_ids, past_key_0, past_value_0, past_key_1, past_value_1):
        from transformers import DynamicCache

        cache = DynamicCache(ddp_cache_data=[(past_key_0, past_value_0), (past_key_1, past_value_1)],
                             config=self.model.config)
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         past_key_values=cache, use_cache=True)
        presents = [t for layer in out.past_key_values.layers for t in (layer.keys, layer.values)]
        return (out.logits, *presents)


def llama_with_past():
    return DecoderWithPast(hf("LlamaForCausalLM", "LlamaConfig", **{**LLAMA, "use_cache": True})())


PAST = 16  # cached tokens
KV = f32([1, LLAMA_KV_HEADS, PAST, LLAMA_HEAD_DIM], -1.0, 1.0)
WITH_PAST_IN = {"input_ids": ids([1, 1], VOCAB),
                "attention_mask": {"shape": [1, PAST + 1], "dtype": "int64", "low": 1, "high": 2},
                "position_ids": {"shape": [1, 1], "dtype": "int64", "low": PAST, "high": PAST + 1},
                "past_key_0": KV, "past_value_0": KV, "past_key_1": KV, "past_value_1": KV}
WITH_PAST_OUT = ["logits", "present_key_0", "present_value_0", "present_key_1", "present_value_1"]
IMG = {"x": f32([1, 3, 224, 224])}
BATCH = {"x": {0: "batch"}}
BERT = dict(vocab_size=VOCAB, hidden_size=128, num_hidden_layers=2, num_attention_heads=4, intermediate_size=512,
            max_position_embeddings=128)
TEXT_IN = {"input_ids": ids([1, 32], VOCAB), "attention_mask": mask([1, 32]),
           "token_type_ids": {"shape": [1, 32], "dtype": "int64", "low": 0, "high": 1}}
TEXT_DYN = {**{k: {0: "batch", 1: "sequence"} for k in ("input_ids", "attention_mask", "token_type_ids")},
            "decoder_input_ids": {0: "batch", 1: "decoder_sequence"}}
# max_source_positions=250: 500 mel frames (5 s) instead of Whisper's 3000; token ids must fit the small vocab
WHISPER = dict(vocab_size=VOCAB, num_mel_bins=80, pad_token_id=0, bos_token_id=1, eos_token_id=2,
               decoder_start_token_id=1, d_model=128, encoder_layers=2, encoder_attention_heads=4,
               encoder_ffn_dim=256, decoder_layers=1, decoder_attention_heads=4, decoder_ffn_dim=256,
               max_source_positions=250)
GPT2 = dict(vocab_size=VOCAB, n_embd=128, n_layer=2, n_head=4, n_positions=128, use_cache=False)

MODELS: dict[str, Model] = {
    # ---------------------------------------------------------------- torchvision
    "resnet18_dynamo": Model("dynamo", tv("resnet18"), "torchvision resnet18", "classification", IMG, BATCH),
    "resnet18_ts11": Model("torchscript", tv("resnet18"), "torchvision resnet18", "classification", IMG, BATCH,
                           opset=11),
    "mobilenet_v3_small_dynamo": Model("dynamo", tv("mobilenet_v3_small"), "torchvision mobilenet_v3_small",
                                       "classification", IMG, BATCH),
    "mobilenet_v3_small_ts13": Model("torchscript", tv("mobilenet_v3_small"), "torchvision mobilenet_v3_small",
                                     "classification", IMG, BATCH, opset=13),
    "efficientnet_b0_dynamo": Model("dynamo", tv("efficientnet_b0"), "torchvision efficientnet_b0",
                                    "classification", IMG, BATCH),
    "convnext_tiny_dynamo": Model("dynamo", tv("convnext_tiny"), "torchvision convnext_tiny", "classification",
                                  IMG, BATCH),
    # the VisionTransformer class of vit_b_16 at ViT-S width / 4 layers / 112 px (vit_b_16 itself is 330 MB)
    "vit_s16_112_dynamo_op23": Model(
        "dynamo", lambda: liven(__import__("torchvision").models.VisionTransformer(
            image_size=112, patch_size=16, num_layers=4, num_heads=6, hidden_dim=384, mlp_dim=1536)),
        "torchvision VisionTransformer (vit_b_16 class; 112 px, 4 layers, d=384)", "classification",
        {"x": f32([1, 3, 112, 112])}, BATCH, opset=23),
    "shufflenet_v2_x1_0_dynamo": Model("dynamo", tv("shufflenet_v2_x1_0"), "torchvision shufflenet_v2_x1_0",
                                       "classification", IMG, BATCH),
    "regnet_y_400mf_ts17": Model("torchscript", tv("regnet_y_400mf"), "torchvision regnet_y_400mf",
                                 "classification", IMG, BATCH, opset=17),
    "squeezenet1_1_ts11": Model("torchscript", tv("squeezenet1_1"), "torchvision squeezenet1_1", "classification",
                                IMG, BATCH, opset=11),
    "deeplabv3_mbv3_dynamo": Model(
        "dynamo", tv("deeplabv3_mobilenet_v3_large", weights_backbone=None),
        "torchvision deeplabv3_mobilenet_v3_large", "segmentation", {"x": f32([1, 3, 256, 256])}, BATCH,
        outputs=["out"], notes="the model returns a dict {'out': ...} (no aux head without weights)"),
    "ssdlite320_ts11": Model(
        "torchscript", ssdlite, "torchvision ssdlite320_mobilenet_v3_large (with box decoding + NMS)", "detection",
        {"images": f32([3, 320, 320], 0.0, 1.0)}, opset=11, outputs=["boxes", "scores", "labels"],
        notes="input is one CHW image (wrapped: the model takes a list of images); transform (resize, normalize), "
              "anchor decoding and batched NMS are in the graph; score_thresh=0.001"),
    # no "ssdlite320_dynamo": torch.export stops on the data-dependent sizes of the per-class score filtering
    # and NMS (GuardOnDataDependentSymNode in torch 2.14), so only the TorchScript exporter takes detectors
    # ---------------------------------------------------------------- timm
    "timm_efficientvit_b0_dynamo": Model("dynamo", timm_model("efficientvit_b0"), "timm efficientvit_b0",
                                         "classification", IMG, BATCH),
    "timm_mobilevitv2_050_ts14": Model("torchscript", timm_model("mobilevitv2_050"), "timm mobilevitv2_050",
                                       "classification", {"x": f32([1, 3, 256, 256])}, BATCH, opset=14),
    "timm_deit_tiny_dynamo": Model("dynamo", timm_model("deit_tiny_patch16_224"), "timm deit_tiny_patch16_224",
                                   "classification", IMG, BATCH),
    "timm_resnet26d_ts13": Model("torchscript", timm_model("resnet26d"), "timm resnet26d", "classification",
                                 IMG, BATCH, opset=13),
    # ---------------------------------------------------------------- transformers (small configs)
    "bert_sdpa_ts14": Model("torchscript", hf("BertModel", "BertConfig", "sdpa", **BERT),
                            "transformers BertModel (sdpa attention), 2 layers d=128", "text encoder", TEXT_IN,
                            TEXT_DYN, opset=14, hf=True, outputs=["last_hidden_state", "pooler_output"]),
    "bert_eager_ts14": Model("torchscript", hf("BertModel", "BertConfig", "eager", **BERT),
                             "transformers BertModel (eager attention), 2 layers d=128", "text encoder", TEXT_IN,
                             TEXT_DYN, opset=14, hf=True, outputs=["last_hidden_state", "pooler_output"]),
    "bert_sdpa_dynamo": Model("dynamo", hf("BertModel", "BertConfig", "sdpa", **BERT),
                              "transformers BertModel (sdpa attention), 2 layers d=128", "text encoder", TEXT_IN,
                              TEXT_DYN, hf=True, outputs=["last_hidden_state", "pooler_output"]),
    "bert_sdpa_dynamo_op23": Model("dynamo", hf("BertModel", "BertConfig", "sdpa", **BERT),
                                   "transformers BertModel (sdpa attention), 2 layers d=128", "text encoder",
                                   TEXT_IN, TEXT_DYN, opset=23, hf=True,
                                   outputs=["last_hidden_state", "pooler_output"]),
    "distilbert_ts14": Model(
        "torchscript", hf("DistilBertForSequenceClassification", "DistilBertConfig", vocab_size=VOCAB, dim=128,
                          n_layers=2, n_heads=4, hidden_dim=512, max_position_embeddings=128),
        "transformers DistilBertForSequenceClassification, 2 layers d=128", "text classification",
        {k: TEXT_IN[k] for k in ("input_ids", "attention_mask")}, TEXT_DYN, opset=14, hf=True, outputs=["logits"]),
    # input_ids alone makes transformers 5 look for packed sequences in position_ids with torch.diff, which
    # the TorchScript exporter cannot convert (no aten::diff symbolic): that variant is dynamo-only
    "gpt2_mask_ts14": Model("torchscript", hf("GPT2LMHeadModel", "GPT2Config", **GPT2),
                            "transformers GPT2LMHeadModel, 2 layers d=128, no KV cache", "causal LM",
                            {"input_ids": ids([1, 32], VOCAB), "attention_mask": mask([1, 32])}, TEXT_DYN,
                            opset=14, hf=True, outputs=["logits"]),
    "gpt2_dynamo": Model("dynamo", hf("GPT2LMHeadModel", "GPT2Config", **GPT2),
                         "transformers GPT2LMHeadModel, 2 layers d=128, no KV cache", "causal LM",
                         {"input_ids": ids([1, 32], VOCAB)}, TEXT_DYN, hf=True, outputs=["logits"]),
    "t5_ts17": Model(
        "torchscript", hf("T5ForConditionalGeneration", "T5Config", vocab_size=VOCAB, d_model=128, d_kv=32, d_ff=256,
                          num_layers=2, num_decoder_layers=2, num_heads=4, use_cache=False),
        "transformers T5ForConditionalGeneration (encoder + decoder, relative position bias), 2+2 layers d=128",
        "seq2seq", {"input_ids": ids([1, 32], VOCAB), "attention_mask": mask([1, 32]),
                    "decoder_input_ids": ids([1, 8], VOCAB)}, TEXT_DYN, opset=17, hf=True,
        outputs=["logits", "encoder_last_hidden_state"], notes="one full forward, no KV cache"),
    "whisper_encoder_ts17": Model(
        "torchscript", hf("WhisperModel", "WhisperConfig", part="encoder", **WHISPER),
        "transformers WhisperEncoder (conv stem + transformer), 2 layers d=128, 500 mel frames", "speech encoder",
        {"input_features": f32([1, 80, 500], -1.0, 1.0)}, {"input_features": {0: "batch"}}, opset=17, hf=True,
        outputs=["last_hidden_state"]),
    "whisper_encoder_dynamo": Model(
        "dynamo", hf("WhisperModel", "WhisperConfig", part="encoder", **WHISPER),
        "transformers WhisperEncoder (conv stem + transformer), 2 layers d=128, 500 mel frames", "speech encoder",
        {"input_features": f32([1, 80, 500], -1.0, 1.0)}, {"input_features": {0: "batch"}}, hf=True,
        outputs=["last_hidden_state"]),
    "wav2vec2_ts14": Model(
        "torchscript", hf("Wav2Vec2ForCTC", "Wav2Vec2Config", vocab_size=32, hidden_size=128, num_hidden_layers=2,
                          num_attention_heads=4, intermediate_size=256, conv_dim=(64,) * 7,
                          num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4),
        "transformers Wav2Vec2ForCTC (Conv1d feature extractor with GroupNorm, conv positional embedding), "
        "2 layers d=128", "speech recognition (CTC)", {"input_values": f32([1, 16000], -1.0, 1.0)},
        {"input_values": {0: "batch", 1: "samples"}}, opset=14, hf=True, outputs=["logits"]),
    "hf_vit_dynamo": Model(
        "dynamo", hf("ViTForImageClassification", "ViTConfig", hidden_size=128, num_hidden_layers=2,
                     num_attention_heads=4, intermediate_size=256, image_size=96, patch_size=16, num_labels=10),
        "transformers ViTForImageClassification, 96 px, 2 layers d=128", "classification",
        {"pixel_values": f32([1, 3, 96, 96])}, {"pixel_values": {0: "batch"}}, hf=True, outputs=["logits"]),
    "clip_text_ts14": Model(
        "torchscript", hf("CLIPTextModelWithProjection", "CLIPTextConfig", vocab_size=VOCAB, hidden_size=128,
                          intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                          max_position_embeddings=77, projection_dim=64, eos_token_id=VOCAB - 1),
        "transformers CLIPTextModelWithProjection (causal mask, EOS pooling), 2 layers d=128", "text embedding",
        {"input_ids": ids([1, 77], VOCAB - 1), "attention_mask": mask([1, 77])}, TEXT_DYN, opset=14, hf=True,
        outputs=["text_embeds", "last_hidden_state"]),
    "clip_vision_dynamo": Model(
        "dynamo", hf("CLIPVisionModelWithProjection", "CLIPVisionConfig", hidden_size=128, intermediate_size=256,
                     num_hidden_layers=2, num_attention_heads=4, image_size=112, patch_size=16, projection_dim=64),
        "transformers CLIPVisionModelWithProjection (quick_gelu, pre-LN), 112 px, 2 layers d=128",
        "image embedding", {"pixel_values": f32([1, 3, 112, 112])}, {"pixel_values": {0: "batch"}}, hf=True,
        outputs=["image_embeds", "last_hidden_state"]),
    # ---------------------------------------------------------------- more architectures (new op classes)
    # decoder-only LM in the LLaMA style: rotary embeddings, RMSNorm, SiLU-gated MLP, grouped-query attention
    "llama_dynamo": Model("dynamo", hf("LlamaForCausalLM", "LlamaConfig", **LLAMA),
                          "transformers LlamaForCausalLM (rotary, RMSNorm, GQA 4/2 heads), 2 layers d=128, no KV cache",
                          "causal LM", {"input_ids": ids([1, 32], VOCAB), "attention_mask": mask([1, 32])},
                          TEXT_DYN, hf=True, outputs=["logits"]),
    "llama_ts17": Model("torchscript", hf("LlamaForCausalLM", "LlamaConfig", **LLAMA),
                        "transformers LlamaForCausalLM (rotary, RMSNorm, GQA 4/2 heads), 2 layers d=128, no KV cache",
                        "causal LM", {"input_ids": ids([1, 32], VOCAB), "attention_mask": mask([1, 32])},
                        TEXT_DYN, opset=17, hf=True, outputs=["logits"]),
    "bart_ts14": Model(
        "torchscript", hf("BartForConditionalGeneration", "BartConfig", vocab_size=VOCAB, d_model=128,
                          encoder_layers=2, decoder_layers=2, encoder_attention_heads=4, decoder_attention_heads=4,
                          encoder_ffn_dim=256, decoder_ffn_dim=256, max_position_embeddings=128, use_cache=False),
        "transformers BartForConditionalGeneration (learned positions, encoder-decoder, cross-attention), "
        "2+2 layers d=128", "seq2seq",
        {"input_ids": ids([1, 32], VOCAB), "attention_mask": mask([1, 32]), "decoder_input_ids": ids([1, 8], VOCAB)},
        TEXT_DYN, opset=14, hf=True, outputs=["logits", "encoder_last_hidden_state"],
        notes="one full forward, no KV cache"),
    "w2v2_conformer_ts17": Model(
        "torchscript", hf("Wav2Vec2ConformerForCTC", "Wav2Vec2ConformerConfig", vocab_size=32, hidden_size=64,
                          num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, conv_dim=(32,) * 7,
                          position_embeddings_type="rotary", conv_depthwise_kernel_size=15,
                          num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4),
        "transformers Wav2Vec2ConformerForCTC (rotary self-attention, GLU + depthwise Conv1d + BatchNorm conformer "
        "module), 2 layers d=64", "speech recognition (CTC)", {"input_values": f32([1, 8000], -1.0, 1.0)},
        {"input_values": {0: "batch", 1: "samples"}}, opset=17, hf=True, outputs=["logits"]),
    "segformer_dynamo": Model(
        "dynamo", hf("SegformerForSemanticSegmentation", "SegformerConfig", depths=[1, 1, 1, 1],
                     hidden_sizes=[16, 32, 64, 128], num_attention_heads=[1, 2, 4, 8], decoder_hidden_size=64,
                     num_labels=5),
        "transformers SegformerForSemanticSegmentation (overlapping patch embeds, spatial-reduction attention, "
        "Mix-FFN depthwise conv, bilinear all-MLP decoder), MiT widths 16-128", "segmentation",
        {"pixel_values": f32([1, 3, 128, 128])}, {"pixel_values": {0: "batch"}}, hf=True, outputs=["logits"]),
    "swin_dynamo": Model(
        "dynamo", hf("SwinForImageClassification", "SwinConfig", "eager", image_size=112, patch_size=4, embed_dim=32,
                     depths=[2, 2, 2], num_heads=[2, 4, 8], window_size=7, num_labels=10),
        "transformers SwinForImageClassification (shifted windows: roll + window partition, relative position "
        "bias, patch merging), 112 px, window 7, 3 stages d=32", "classification",
        {"pixel_values": f32([1, 3, 112, 112])}, {"pixel_values": {0: "batch"}}, hf=True, outputs=["logits"],
        notes="eager attention: with SDPA torch 2.14's dynamo exporter stops in the decomposition (ConversionError: "
              "cannot view a [16, 49, 2, 16] tensor with its strides as [16, 49, 32])"),
    "yolos_ts14": Model(
        "torchscript", hf("YolosForObjectDetection", "YolosConfig", hidden_size=96, num_hidden_layers=2,
                          num_attention_heads=4, intermediate_size=192, image_size=[96, 128], patch_size=16,
                          num_detection_tokens=10, num_labels=5),
        "transformers YolosForObjectDetection (ViT with detection tokens, bicubic position-embedding "
        "interpolation, box MLP head), 96x128, 2 layers d=96", "detection",
        {"pixel_values": f32([1, 3, 96, 128])}, {"pixel_values": {0: "batch"}}, opset=14, hf=True,
        outputs=["logits", "pred_boxes"]),
    "cvt_ts14": Model(
        "torchscript", hf("CvtForImageClassification", "CvtConfig", embed_dim=[16, 32, 64], num_heads=[1, 2, 4],
                          depth=[1, 2, 3], num_labels=10),
        "transformers CvtForImageClassification (convolutional token embedding, depthwise-conv+BatchNorm q/k/v "
        "projections, einsum attention, cls token in the last stage), widths 16-64", "classification",
        {"pixel_values": f32([1, 3, 96, 96])}, {"pixel_values": {0: "batch"}}, opset=14, hf=True,
        outputs=["logits"]),
    "fasterrcnn_mbv3_320_ts11": Model(
        "torchscript", fasterrcnn_mbv3,
        "torchvision fasterrcnn_mobilenet_v3_large_320_fpn (RPN + RoIAlign MultiScaleRoIAlign + box head + NMS)",
        "detection", {"images": f32([3, 240, 320], 0.0, 1.0)}, opset=11, outputs=["boxes", "scores", "labels"],
        notes="input is one CHW image (wrapped); transform (resize to 320, normalize), RPN proposals (TopK, NMS), "
              "RoiAlign and per-class NMS are in the graph; box_score_thresh=0.001"),
    "r3d_18_dynamo": Model("dynamo", tv("r3d_18"), "torchvision video r3d_18 (3-D convolutions, 3-D pooling)",
                           "video classification", {"x": f32([1, 3, 8, 64, 64])}, BATCH,
                           notes="8 frames of 64x64"),
    "raft_small_ts16": Model(
        "torchscript", raft_small,
        "torchvision raft_small (correlation pyramid, GridSample lookups, ConvGRU updates, convex upsampling "
        "with unfold), 4 refinement steps", "optical flow",
        {"image1": f32([1, 3, 128, 128], -1.0, 1.0), "image2": f32([1, 3, 128, 128], -1.0, 1.0)}, opset=16,
        outputs=["flow"], notes="num_flow_updates=4 (12 by default): the last flow is the output"),
    "timm_levit_128s_dynamo": Model(
        "dynamo", timm_model("levit_128s"), "timm levit_128s (BN-folded linear attention with learned biases "
        "gathered by index, strided-subsample attention, hard-swish)", "classification", IMG, BATCH),
    "timm_hrnet_w18_small_ts13": Model(
        "torchscript", timm_model("hrnet_w18_small"), "timm hrnet_w18_small (parallel multi-resolution branches, "
        "nearest upsample fusion)", "classification", IMG, BATCH, opset=13),
    "style_sr_ts13": Model(
        "torchscript", style_sr, "fast-style / super-resolution net: ReflectionPad2d, InstanceNorm2d, GroupNorm, "
        "bilinear align_corners resize, PixelShuffle, nearest Upsample, PReLU", "image-to-image",
        {"x": f32([1, 3, 96, 96], -1.0, 1.0)}, {"x": {0: "batch"}}, opset=13),
    "style_sr_dynamo": Model(
        "dynamo", style_sr, "fast-style / super-resolution net: ReflectionPad2d, InstanceNorm2d, GroupNorm, "
        "bilinear align_corners resize, PixelShuffle, nearest Upsample, PReLU", "image-to-image",
        {"x": f32([1, 3, 96, 96], -1.0, 1.0)}, {"x": {0: "batch"}}),
    # opset 23: the dynamo exporter's RMSNormalization / RotaryEmbedding / Attention ops where it emits them
    "llama_dynamo_op23": Model("dynamo", hf("LlamaForCausalLM", "LlamaConfig", **LLAMA),
                               "transformers LlamaForCausalLM (rotary, RMSNorm, GQA 4/2 heads), 2 layers d=128, "
                               "no KV cache", "causal LM",
                               {"input_ids": ids([1, 32], VOCAB), "attention_mask": mask([1, 32])}, TEXT_DYN,
                               opset=23, hf=True, outputs=["logits"]),
    # XLM-R (the e5 / bge-m3 / multilingual sentence-transformers base): positions from a CumSum over the
    # padding mask of the input ids
    "xlm_roberta_ts14": Model(
        "torchscript", hf("XLMRobertaModel", "XLMRobertaConfig", vocab_size=VOCAB, hidden_size=128,
                          num_hidden_layers=2, num_attention_heads=4, intermediate_size=256,
                          max_position_embeddings=130, pad_token_id=1),
        "transformers XLMRobertaModel (CumSum position ids from the padding mask), 2 layers d=128",
        "text encoder", {"input_ids": ids([1, 32], VOCAB), "attention_mask": mask([1, 32])}, TEXT_DYN,
        opset=14, hf=True, outputs=["last_hidden_state", "pooler_output"]),
    "stn_dynamo": Model("dynamo", STN, "spatial transformer network (affine_grid + grid_sample) + CNN classifier",
                        "classification", {"x": f32([1, 1, 28, 28], 0.0, 1.0)}, BATCH,
                        outputs=["log_probs", "warped"]),
    "stn_ts20": Model("torchscript", STN, "spatial transformer network (affine_grid + grid_sample) + CNN "
                      "classifier", "classification", {"x": f32([1, 1, 28, 28], 0.0, 1.0)}, BATCH, opset=20,
                      outputs=["log_probs", "warped"],
                      notes="opset 20: the TorchScript exporter has affine_grid (AffineGrid) from opset 20 only"),
    "mel_cnn_dynamo": Model("dynamo", MelCNN, "torch.stft + mel filterbank + log front end, 2-layer CNN",
                            "audio classification", {"wave": f32([1, 16000], -1.0, 1.0)}, {"wave": {0: "batch"}},
                            notes="STFT in the graph (1 s at 16 kHz, n_fft=400, hop=160)"),
    "unet3d_ts17": Model("torchscript", unet3d, "3-D U-Net (Conv3d, InstanceNorm3d, MaxPool3d, ConvTranspose3d, "
                         "trilinear Upsample, skip concat)", "volumetric segmentation",
                         {"x": f32([1, 1, 16, 32, 32])}, BATCH, opset=17),
    # a decode step with the KV cache in and out (optimum's decoder_with_past layout): Concat of past and
    # new keys, positions given, mask over past + new tokens
    "llama_with_past_ts17": Model(
        "torchscript", llama_with_past, "transformers LlamaForCausalLM decode step with past key/values as inputs "
        "and outputs (GQA 4/2 heads), 2 layers d=128", "causal LM (decode step, KV cache)", WITH_PAST_IN,
        {"input_ids": {0: "batch"}, "attention_mask": {0: "batch", 1: "total_sequence"}, "position_ids": {0: "batch"},
         **{f"past_{kv}_{i}": {0: "batch", 2: "past_sequence"} for kv in ("key", "value") for i in (0, 1)}},
        opset=17, outputs=WITH_PAST_OUT,
        notes=f"one new token after {PAST} cached ones (the new-token axis static: the exporter's example would "
              "otherwise be 2 new tokens against a mask of 17)"),
    "llama_with_past_dynamo": Model(
        "dynamo", llama_with_past, "transformers LlamaForCausalLM decode step with past key/values as inputs "
        "and outputs (GQA 4/2 heads), 2 layers d=128", "causal LM (decode step, KV cache)", WITH_PAST_IN,
        outputs=WITH_PAST_OUT, notes=f"one new token after {PAST} cached ones; static shapes (torch.export "
        "wants the mask length tied to past + new as a derived dim)"),
    # ---------------------------------------------------------------- recurrent / control flow
    "kws_lstm_ts13": Model(
        "torchscript", KeywordSpotter, "Conv1d front end + 2-layer nn.LSTM with h0/c0 state in/out + Linear",
        "keyword spotting (streaming)",
        {"mel": f32([1, 100, 40], -3.0, 3.0), "h0": f32([2, 1, 64], -1.0, 1.0), "c0": f32([2, 1, 64], -1.0, 1.0)},
        {"mel": {0: "batch", 1: "frames"}, "h0": {1: "batch"}, "c0": {1: "batch"}}, opset=13,
        outputs=["log_probs", "hn", "cn"]),
    "kws_lstm_dynamo": Model(
        "dynamo", KeywordSpotter, "Conv1d front end + 2-layer nn.LSTM with h0/c0 state in/out + Linear",
        "keyword spotting (streaming)",
        {"mel": f32([1, 100, 40], -3.0, 3.0), "h0": f32([2, 1, 64], -1.0, 1.0), "c0": f32([2, 1, 64], -1.0, 1.0)},
        {"mel": {0: "batch"}, "h0": {1: "batch"}, "c0": {1: "batch"}}, outputs=["log_probs", "hn", "cn"],
        notes="fixed 100-frame chunks: with a dynamic frame axis the LSTM decomposition fails in torch 2.14"),
    "cond_gated_dynamo": Model(
        "dynamo", GatedBlock, "CNN with a torch.cond branch on the activation mean (ONNX If)", "classification",
        {"x": f32([1, 3, 64, 64], 0.0, 1.0)}, BATCH, notes="If node whose branches hold convolutions"),
    "scripted_loop_ts13": Model(
        "torchscript", scripted_loop, "torch.jit.script'ed recurrence over the time axis (ONNX Loop)",
        "sequence classification", {"x": f32([1, 20, 32], -1.0, 1.0)}, {"x": {0: "batch", 1: "time"}}, opset=13,
        outputs=["logits"], notes="Loop with a trip count taken from the input's shape"),
}


# ---------------------------------------------------------------- families: one of each (2026-12-08)
# timm architectures at _SMALL input sizes, each with one exporter (TorchScript at opsets 11/13/17 or dynamo),
# and transformers model classes from _SMALL configs, each with both exporters: breadth over the families users
# bring (reparameterizable, hybrid conv-attention, window/relative attention, MLP-mixer-style, NF-nets; decoder-only
# LMs with rotary/ALiBi/sliding window, encoders with relative positions, speech encoders, depth estimation,
# detection transformers). Arch, exporter, TorchScript opset, input size:
# Left out, because torch 2.14 / timm 1.0.31 / transformers 5.25 do not export them at these settings: timm
# efficientformerv2_s0, gcvit_xxtiny, nest_tiny, visformer_tiny, levit_conv_128s (fixed-size reshapes at 160 px),
# maxvit_nano_rw_256, crossvit_tiny_240, cait_xxs24_224, hiera_tiny_224 (SDPA below opset 14), volo_d1_224
# (col2im below opset 18), twins_svt_small, halonet26t, convit_tiny (dynamo); transformers Encodec, RT-DETR,
# Whisper encoder-decoder (aten::diff), BEiT (dynamo).
TIMM_FAMILIES = [
    ('ghostnetv2_100', 'torchscript', 11, 100),
    ('repvgg_a0', 'dynamo', None, 160),
    ('mobileone_s0', 'torchscript', 13, 160),
    ('fastvit_t8', 'dynamo', None, 160),
    ('tiny_vit_5m_224', 'dynamo', None, 224),
    ('coatnet_nano_rw_224', 'dynamo', None, 224),
    ('convnextv2_atto', 'torchscript', 13, 160),
    ('hgnetv2_b0', 'dynamo', None, 160),
    ('mobilenetv4_conv_small', 'torchscript', 17, 160),
    ('mobilenetv4_hybrid_medium', 'dynamo', None, 160),
    ('dm_nfnet_f0', 'torchscript', 11, 160),
    ('resnest14d', 'dynamo', None, 160),
    ('res2net50_14w_8s', 'torchscript', 13, 160),
    ('cspdarknet53', 'dynamo', None, 160),
    ('dla34', 'torchscript', 17, 160),
    ('rexnet_100', 'dynamo', None, 100),
    ('mixnet_s', 'torchscript', 11, 160),
    ('xcit_nano_12_p16_224', 'dynamo', None, 224),
    ('pit_ti_224', 'dynamo', None, 224),
    ('edgenext_xx_small', 'torchscript', 17, 160),
    ('caformer_s18', 'dynamo', None, 160),
    ('inception_next_tiny', 'torchscript', 11, 160),
    ('efficientvit_m0', 'dynamo', None, 160),
    ('davit_tiny', 'dynamo', None, 160),
    ('mvitv2_tiny', 'torchscript', 17, 160),
    ('eva02_tiny_patch14_224', 'dynamo', None, 224),
    ('sequencer2d_s', 'dynamo', None, 160),
    ('poolformerv2_s12', 'torchscript', 17, 160),
    ('lcnet_050', 'dynamo', None, 50),
    ('selecsls42b', 'torchscript', 11, 160),
    ('dpn68', 'dynamo', None, 160),
    ('botnet26t_256', 'torchscript', 17, 256),
    ('tnt_s_patch16_224', 'dynamo', None, 224),
    ('ese_vovnet19b_dw', 'dynamo', None, 160),
    ('regnetz_b16', 'torchscript', 13, 160),
    ('swinv2_cr_tiny_ns_224', 'dynamo', None, 224),
    ('starnet_s1', 'dynamo', None, 160),
    ('repghostnet_050', 'torchscript', 11, 50),
    ('efficientnet_b0', 'dynamo', None, 160),
    ('mambaout_femto', 'torchscript', 13, 160),
    ('fastvit_mci0', 'dynamo', None, 160),
    ('vit_tiny_patch16_384', 'torchscript', 17, 384),
    ('deit3_small_patch16_224', 'dynamo', None, 224),
    ('rdnet_tiny', 'dynamo', None, 160),
    ('nextvit_small', 'torchscript', 17, 160),
    ('tresnet_m', 'dynamo', None, 160),
    ('ghostnet_100', 'torchscript', 11, 100),
    ('gernet_s', 'dynamo', None, 160),
    ('cs3darknet_s', 'torchscript', 13, 160),
    ('resnetv2_50x1_bit', 'dynamo', None, 160),
    ('resnet50_gn', 'torchscript', 17, 160),
    ('inception_v3', 'dynamo', None, 160),
    ('inception_v4', 'torchscript', 11, 160),
    ('xception41', 'dynamo', None, 160),
    ('densenet121', 'torchscript', 13, 160),
    ('fbnetc_100', 'dynamo', None, 100),
    ('mnasnet_small', 'torchscript', 17, 160),
    ('tinynet_e', 'dynamo', None, 160),
    ('hardcorenas_a', 'torchscript', 11, 160),
    ('hrnet_w18_small_v2', 'dynamo', None, 160),
]
for _arch, _exporter, _opset, _size in TIMM_FAMILIES:
    MODELS[f"timm_{_arch}_" + (f"ts{_opset}" if _exporter == "torchscript" else "dynamo")] = Model(
        _exporter, timm_model(_arch), f"timm {_arch}", "classification", {"x": f32([1, 3, _size, _size])}, BATCH,
        opset=_opset)


def _hf_family(name: str, cls: str, cfg: str, config: dict, inputs: dict, outputs: list[str], dyn: dict = TEXT_DYN,
               opset: int = 14, skip: tuple[str, ...] = ()) -> None:
    """One transformers class in both exporters (TorchScript at ``opset``, dynamo at its default)."""
    for exporter, suffix in (("torchscript", f"ts{opset}"), ("dynamo", "dynamo")):
        if exporter in skip:
            continue
        MODELS[f"hf_{name}_{suffix}"] = Model(
            exporter, hf(cls, cfg, **config), f"transformers {cls}", "transformers family", inputs,
            {k: v for k, v in dyn.items() if k in inputs}, opset=opset if exporter == "torchscript" else None,
            hf=True, outputs=outputs)


_TXT24 = {"input_ids": ids([1, 24], VOCAB), "attention_mask": mask([1, 24])}
_SMALL = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128)
_IMG112 = {"pixel_values": f32([1, 3, 112, 112])}
_PIXEL_DYN = {"pixel_values": {0: "batch"}}
_hf_family(
    "deberta_v2",
    "DebertaV2Model",
    "DebertaV2Config",
    dict(
        vocab_size=VOCAB,
        **_SMALL,
        max_position_embeddings=128,
        relative_attention=True,
        position_buckets=32,
        pos_att_type=["p2c", "c2p"]
    ),
    _TXT24,
    ["last_hidden_state"],
)
_hf_family(
    "albert",
    "AlbertModel",
    "AlbertConfig",
    dict(vocab_size=VOCAB, embedding_size=32, **_SMALL),
    _TXT24,
    ["last_hidden_state", "pooler_output"],
)
_hf_family(
    "mobilebert",
    "MobileBertModel",
    "MobileBertConfig",
    dict(
        vocab_size=VOCAB,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        embedding_size=32,
        intra_bottleneck_size=32,
        true_hidden_size=32,
    ),
    _TXT24,
    ["last_hidden_state", "pooler_output"],
)
_hf_family(
    "electra",
    "ElectraForSequenceClassification",
    "ElectraConfig",
    dict(vocab_size=VOCAB, embedding_size=32, **_SMALL),
    _TXT24,
    ["logits"],
)
_hf_family(
    "mpnet",
    "MPNetModel",
    "MPNetConfig",
    dict(vocab_size=VOCAB, **_SMALL),
    _TXT24,
    ["last_hidden_state", "pooler_output"],
)
_hf_family(
    "roformer",
    "RoFormerModel",
    "RoFormerConfig",
    dict(vocab_size=VOCAB, embedding_size=64, **_SMALL),
    _TXT24,
    ["last_hidden_state"],
)
_hf_family(
    "qwen2",
    "Qwen2ForCausalLM",
    "Qwen2Config",
    dict(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        use_cache=False,
    ),
    _TXT24,
    ["logits"],
)
_hf_family(
    "mistral",
    "MistralForCausalLM",
    "MistralConfig",
    dict(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        sliding_window=8,
        use_cache=False,
    ),
    _TXT24,
    ["logits"],
)
_hf_family(
    "phi",
    "PhiForCausalLM",
    "PhiConfig",
    dict(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        partial_rotary_factor=0.5,
        use_cache=False,
    ),
    _TXT24,
    ["logits"],
)
_hf_family(
    "gemma",
    "GemmaForCausalLM",
    "GemmaConfig",
    dict(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=16,
        use_cache=False,
    ),
    _TXT24,
    ["logits"],
)
_hf_family(
    "gptneox",
    "GPTNeoXForCausalLM",
    "GPTNeoXConfig",
    dict(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        rotary_pct=0.25,
        use_cache=False,
    ),
    _TXT24,
    ["logits"],
)
_hf_family(
    "bloom",
    "BloomForCausalLM",
    "BloomConfig",
    dict(vocab_size=VOCAB, hidden_size=64, n_layer=2, n_head=4, use_cache=False),
    _TXT24,
    ["logits"],
)
_hf_family(
    "opt",
    "OPTForCausalLM",
    "OPTConfig",
    dict(
        vocab_size=VOCAB,
        hidden_size=64,
        ffn_dim=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        word_embed_proj_dim=64,
        use_cache=False,
    ),
    _TXT24,
    ["logits"],
)
_hf_family(
    "falcon",
    "FalconForCausalLM",
    "FalconConfig",
    dict(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, use_cache=False),
    _TXT24,
    ["logits"],
)
_hf_family(
    "marian",
    "MarianMTModel",
    "MarianConfig",
    dict(
        vocab_size=VOCAB,
        d_model=64,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=128,
        decoder_ffn_dim=128,
        pad_token_id=0,
        decoder_start_token_id=0,
        use_cache=False,
    ),
    {**_TXT24, "decoder_input_ids": ids([1, 8], VOCAB)},
    ["logits"],
)
_hf_family(
    "dinov2",
    "Dinov2Model",
    "Dinov2Config",
    dict(**_SMALL, image_size=112, patch_size=14),
    _IMG112,
    ["last_hidden_state"],
    dyn=_PIXEL_DYN,
)
_hf_family(
    "dpt_dinov2",
    "DepthAnythingForDepthEstimation",
    "DepthAnythingConfig",
    dict(
        backbone_config=dict(
            model_type="dinov2",
            hidden_size=64,
            num_hidden_layers=4,
            num_attention_heads=4,
            intermediate_size=128,
            image_size=112,
            patch_size=14,
            out_indices=[1, 2, 3, 4],
            reshape_hidden_states=False,
        ),
        reassemble_hidden_size=64,
        neck_hidden_sizes=[16, 32, 64, 64],
        fusion_hidden_size=32,
        head_hidden_size=16,
        patch_size=14,
    ),
    _IMG112,
    ["predicted_depth"],
    dyn=_PIXEL_DYN,
)
_hf_family(
    "beit",
    "BeitForImageClassification",
    "BeitConfig",
    dict(**_SMALL, image_size=112, patch_size=16, use_relative_position_bias=True, num_labels=10),
    _IMG112,
    ["logits"],
    dyn=_PIXEL_DYN,
    skip=("dynamo",),
)
_hf_family(
    "convnextv2",
    "ConvNextV2ForImageClassification",
    "ConvNextV2Config",
    dict(hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 2, 1], num_labels=10),
    _IMG112,
    ["logits"],
    dyn=_PIXEL_DYN,
)
_hf_family(
    "swinv2",
    "Swinv2ForImageClassification",
    "Swinv2Config",
    dict(
        image_size=112,
        patch_size=4,
        embed_dim=32,
        depths=[1, 1, 2, 1],
        num_heads=[1, 2, 4, 8],
        window_size=7,
        num_labels=10,
    ),
    _IMG112,
    ["logits"],
    dyn=_PIXEL_DYN,
)
_hf_family(
    "mobilevit",
    "MobileViTForImageClassification",
    "MobileViTConfig",
    dict(image_size=128, hidden_sizes=[32, 48, 64], neck_hidden_sizes=[8, 8, 16, 24, 32, 40, 80], num_labels=10),
    {"pixel_values": f32([1, 3, 128, 128])},
    ["logits"],
    dyn=_PIXEL_DYN,
)
_hf_family(
    "hubert",
    "HubertModel",
    "HubertConfig",
    dict(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        conv_dim=(32,) * 7,
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=4,
    ),
    {"input_values": f32([1, 8000], -1, 1)},
    ["last_hidden_state"],
    dyn={"input_values": {0: "batch", 1: "samples"}},
)
_hf_family(
    "wavlm",
    "WavLMModel",
    "WavLMConfig",
    dict(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        conv_dim=(32,) * 7,
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=4,
    ),
    {"input_values": f32([1, 8000], -1, 1)},
    ["last_hidden_state"],
    dyn={"input_values": {0: "batch", 1: "samples"}},
)
_hf_family(
    "ast",
    "ASTForAudioClassification",
    "ASTConfig",
    dict(**_SMALL, num_mel_bins=64, max_length=100, num_labels=5),
    {"input_values": f32([1, 100, 64], -1, 1)},
    ["logits"],
    dyn={"input_values": {0: "batch"}},
)
_hf_family(
    "detr",
    "DetrForObjectDetection",
    "DetrConfig",
    dict(
        use_timm_backbone=False,
        use_pretrained_backbone=False,
        backbone_config=dict(
            model_type="resnet",
            embedding_size=16,
            hidden_sizes=[16, 32, 64, 128],
            depths=[1, 1, 1, 1],
            out_features=["stage4"],
        ),
        d_model=64,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=128,
        decoder_ffn_dim=128,
        num_queries=10,
        num_labels=5,
    ),
    {"pixel_values": f32([1, 3, 128, 128])},
    ["logits", "pred_boxes"],
    dyn={},
)
_hf_family(
    "segformer_b",
    "SegformerForSemanticSegmentation",
    "SegformerConfig",
    dict(hidden_sizes=[16, 32, 64, 128], num_labels=5, decoder_hidden_size=64),
    _IMG112,
    ["logits"],
    dyn=_PIXEL_DYN,
)
_hf_family(
    "convnext",
    "ConvNextForImageClassification",
    "ConvNextConfig",
    dict(hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 2, 1], num_labels=10),
    _IMG112,
    ["logits"],
    dyn=_PIXEL_DYN,
)
_hf_family(
    "siglip_vision",
    "SiglipVisionModel",
    "SiglipVisionConfig",
    dict(**_SMALL, image_size=112, patch_size=16),
    _IMG112,
    ["last_hidden_state", "pooler_output"],
    dyn=_PIXEL_DYN,
)
_hf_family(
    "w2v2_conformer_rotary",
    "Wav2Vec2ConformerModel",
    "Wav2Vec2ConformerConfig",
    dict(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        conv_dim=(32,) * 7,
        position_embeddings_type="rotary",
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=4,
    ),
    {"input_values": f32([1, 8000], -1, 1)},
    ["last_hidden_state"],
    dyn={"input_values": {0: "batch", 1: "samples"}},
)


# ------------------------------------------------------------------------------ export
class _Positional(nn.Module):
    """Positional wrapper for the TorchScript exporter: it binds a dict of inputs positionally and trips over
    the deprecated keyword arguments that transformers 5 adds to forward(), so the inputs are passed by name
    here, and the ModelOutput is flattened to a tuple (what optimum's model patcher does too)."""

    def __init__(self, model: nn.Module, names: list[str]):
        super().__init__()
        self.model, self.names = model, names

    def forward(self, *args):
        return self.model(**dict(zip(self.names, args))).to_tuple()


def export_one(name: str, out: Path, force: bool) -> bool:
    """Export one model; returns False when it was already there."""
    import onnx

    spec = MODELS[name]
    dst, side = out / f"{name}.onnx", out / f"{name}.json"
    if dst.exists() and side.exists() and not force:
        return False
    torch.manual_seed(0)
    model = spec.build().eval()
    torch.manual_seed(1)
    # dynamo specialises dims whose example size is 1, so dynamic dims get an example size of at least 2
    examples = {}
    for k, s in spec.inputs.items():
        shape = [max(2, d) if i in spec.dynamic.get(k, {}) else d for i, d in enumerate(s["shape"])]
        examples[k] = example_tensor(s, shape)
    names = list(spec.inputs)
    dynamic = {k: v for k, v in spec.dynamic.items() if k in spec.inputs}
    common = dict(input_names=names, output_names=spec.outputs)
    tmp = dst.with_suffix(".onnx.tmp")
    t0 = time.time()
    notes = []
    # the exporters print progress and hints; keep the zoo log to one line per skipped model
    with contextlib.redirect_stdout(io.StringIO()):
        if spec.exporter == "torchscript":
            target = _Positional(model, names) if spec.hf else model
            torch.onnx.export(target, tuple(examples.values()), str(tmp), dynamo=False, opset_version=spec.opset,
                              dynamic_axes=dynamic or None, **common)
            call = f"torch.onnx.export(dynamo=False, opset_version={spec.opset}, dynamic_axes={dynamic or None})"
        else:
            # one Dim object per name: inputs that share a dim name share the symbol
            syms = {d: torch.export.Dim(d) for axes in dynamic.values() for d in axes.values()}
            dims = {k: {a: syms[d] for a, d in axes.items()} for k, axes in dynamic.items()}
            kwargs = dict(dynamic_shapes=dims or None, external_data=False, **common)
            if spec.opset:
                kwargs["opset_version"] = spec.opset
            if spec.hf:
                # what users of torch.export write for a transformers model: keyword inputs
                torch.onnx.export(model, (), str(tmp), kwargs=examples, dynamo=True, **kwargs)
            else:
                if dims:
                    kwargs["dynamic_shapes"] = tuple(dims.get(k) for k in names)
                torch.onnx.export(model, tuple(examples.values()), str(tmp), dynamo=True, **kwargs)
            call = (f"torch.onnx.export(dynamo=True{f', opset_version={spec.opset}' if spec.opset else ''}, "
                    f"dynamic_shapes on {sorted(dims) or 'nothing'}, external_data=False)")
    seconds = time.time() - t0
    proto = onnx.load(str(tmp))
    opset = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    ops = {n.op_type for n in proto.graph.node}
    control = sorted(ops & {"If", "Loop", "Scan", "LSTM", "GRU", "Attention", "NonMaxSuppression"})
    if spec.architecture.startswith("torchvision"):
        notes.append("BatchNorm stats / zero-initialised weights randomised (seeded), see liven()")
    notes += [call, spec.notes, f"has {', '.join(control)}" if control else "", dims_note(proto),
              f"{len(proto.graph.node)} nodes, export took {seconds:.1f} s"]
    os.replace(tmp, dst)
    producer = f"torch-{spec.exporter}"
    versions = [f"torch {torch.__version__.split('+')[0]}"]
    if spec.hf:
        import transformers

        versions.append(f"transformers {transformers.__version__}")
    if spec.architecture.startswith("timm"):
        import timm

        versions.append(f"timm {timm.__version__}")
    if spec.architecture.startswith("torchvision"):
        import torchvision

        versions.append(f"torchvision {torchvision.__version__.split('+')[0]}")
    if spec.exporter == "dynamo":
        import onnxscript

        versions.append(f"onnxscript {onnxscript.__version__}")
    meta = {"name": name, "producer": producer, "producer_version": ", ".join(versions),
            "architecture": spec.architecture, "task": spec.task, "opset": opset, "inputs": spec.inputs,
            "notes": "; ".join(n for n in notes if n)}
    side.write_text(json.dumps(meta, indent=1) + "\n")
    return True


def export_logged(name: str, out: Path, force: bool) -> None:
    """export_one, saying on stderr how long an export took and removing a partial .onnx.tmp if it fails."""
    t0 = time.time()
    try:
        if export_one(name, out, force):
            print(f"exported {name} ({time.time() - t0:.1f} s)", file=sys.stderr)
    except Exception:
        (out / f"{name}.onnx.tmp").unlink(missing_ok=True)
        raise


def error_text(e: BaseException) -> str:
    lines = [line for line in str(e).splitlines() if line.strip()]
    # torch.onnx's errors open with generic advice; the cause follows "## Exception summary"
    if "## Exception summary" in lines:
        lines = lines[lines.index("## Exception summary") + 1:]
    return lines[0][:300] if lines else ""


def main() -> int:
    return run(__doc__.splitlines()[0], MODELS, export_logged, error_text=error_text)


if __name__ == "__main__":
    sys.exit(main())
