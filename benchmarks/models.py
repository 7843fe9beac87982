"""Reference models of the benchmark suite, defined in PyTorch and exported to ONNX.

The architectures are written out here (no torchvision / transformers) and
randomly initialised with ``torch.manual_seed``; exports go through the
TorchScript exporter (``dynamo=False``) because that is what produces the
Shape -> Gather -> Concat -> Reshape subgraphs found in users' models.

Needs torch (CPU wheel: ``pip install torch==2.13.0``). Usage::

    python benchmarks/models.py --out DIR [--only resnet50,bert_base] [--dynamic-batch] [--verify]
"""

from __future__ import annotations

import argparse
import functools
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

SEED = 0


# --------------------------------------------------------------------------
# MobileNetV2 (Sandler et al. 2018), width 1.0, 224x224, as in torchvision.
# --------------------------------------------------------------------------

class ConvBNReLU6(nn.Sequential):
    def __init__(self, c_in, c_out, kernel=3, stride=1, groups=1):
        super().__init__(
            nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, groups=groups, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU6(inplace=True),
        )


class InvertedResidual(nn.Module):
    def __init__(self, c_in, c_out, stride, expand_ratio):
        super().__init__()
        hidden = c_in * expand_ratio
        self.use_residual = stride == 1 and c_in == c_out
        layers = [ConvBNReLU6(c_in, hidden, kernel=1)] if expand_ratio != 1 else []
        layers += [
            ConvBNReLU6(hidden, hidden, stride=stride, groups=hidden),  # depthwise
            nn.Conv2d(hidden, c_out, 1, bias=False),  # linear bottleneck: no activation
            nn.BatchNorm2d(c_out),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x):
        return x + self.conv(x) if self.use_residual else self.conv(x)


class MobileNetV2(nn.Module):
    # (expand ratio t, output channels c, repeats n, first stride s)
    SETTINGS = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]

    def __init__(self, num_classes=1000):
        super().__init__()
        layers = [ConvBNReLU6(3, 32, stride=2)]
        c_in = 32
        for t, c, n, s in self.SETTINGS:
            for i in range(n):
                layers.append(InvertedResidual(c_in, c, s if i == 0 else 1, t))
                c_in = c
        layers.append(ConvBNReLU6(c_in, 1280, kernel=1))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, num_classes))

    def forward(self, x):
        x = F.adaptive_avg_pool2d(self.features(x), 1)
        return self.classifier(torch.flatten(x, 1))


# --------------------------------------------------------------------------
# ResNet-50 (He et al. 2016), v1.5 (stride on the 3x3 conv) as in torchvision.
# --------------------------------------------------------------------------

class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, c_in, width, stride=1):
        super().__init__()
        c_out = width * self.expansion
        self.conv1 = nn.Conv2d(c_in, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, c_out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class ResNet50(nn.Module):
    def __init__(self, num_classes=1000):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2, 1),
        )
        stages, c_in = [], 64
        for width, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
            for i in range(blocks):
                stages.append(Bottleneck(c_in, width, stride if i == 0 else 1))
                c_in = width * Bottleneck.expansion
        self.stages = nn.Sequential(*stages)
        self.fc = nn.Linear(c_in, num_classes)

    def forward(self, x):
        x = F.adaptive_avg_pool2d(self.stages(self.stem(x)), 1)
        return self.fc(torch.flatten(x, 1))


# --------------------------------------------------------------------------
# BERT-base encoder (Devlin et al. 2019), written like HF transformers' eager BertModel.
# --------------------------------------------------------------------------

class BertSelfAttention(nn.Module):
    def __init__(self, hidden, heads):
        super().__init__()
        self.heads, self.head_dim = heads, hidden // heads
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)

    def split_heads(self, x):
        # view(x.size()[:-1] + ...) is what makes the exporter emit Shape/Gather/Concat.
        x = x.view(x.size()[:-1] + (self.heads, self.head_dim))
        return x.permute(0, 2, 1, 3)

    def forward(self, x, mask_bias):
        q, k, v = (self.split_heads(layer(x)) for layer in (self.query, self.key, self.value))
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.head_dim)
        probs = torch.softmax(scores + mask_bias, dim=-1)
        context = torch.matmul(probs, v).permute(0, 2, 1, 3).contiguous()
        return context.view(context.size()[:-2] + (self.heads * self.head_dim,))


class BertLayer(nn.Module):
    def __init__(self, hidden, heads, ffn, eps=1e-12):
        super().__init__()
        self.attention = BertSelfAttention(hidden, heads)
        self.attention_out = nn.Linear(hidden, hidden)
        self.attention_norm = nn.LayerNorm(hidden, eps=eps)
        self.ffn_in = nn.Linear(hidden, ffn)
        self.ffn_out = nn.Linear(ffn, hidden)
        self.ffn_norm = nn.LayerNorm(hidden, eps=eps)

    def forward(self, x, mask_bias):
        x = self.attention_norm(x + self.attention_out(self.attention(x, mask_bias)))
        return self.ffn_norm(x + self.ffn_out(F.gelu(self.ffn_in(x))))


class BertBase(nn.Module):
    def __init__(self, vocab=30522, hidden=768, layers=12, heads=12, ffn=3072, max_positions=512, type_vocab=2):
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab, hidden)
        self.position_embeddings = nn.Embedding(max_positions, hidden)
        self.token_type_embeddings = nn.Embedding(type_vocab, hidden)
        self.embedding_norm = nn.LayerNorm(hidden, eps=1e-12)
        self.register_buffer("position_ids", torch.arange(max_positions).unsqueeze(0), persistent=False)
        self.layers = nn.ModuleList(BertLayer(hidden, heads, ffn) for _ in range(layers))
        self.pooler = nn.Linear(hidden, hidden)

    def forward(self, input_ids, attention_mask):
        seq = input_ids.size(1)
        # No token_type_ids input: all tokens are segment 0, as HF does when it is omitted.
        token_types = torch.zeros_like(input_ids)
        x = (self.word_embeddings(input_ids) + self.token_type_embeddings(token_types)
             + self.position_embeddings(self.position_ids[:, :seq]))
        x = self.embedding_norm(x)
        # Additive mask, [B, 1, 1, S]: 0 where attended, finfo.min where padded.
        mask = attention_mask[:, None, None, :].to(x.dtype)
        mask_bias = (1.0 - mask) * torch.finfo(x.dtype).min
        for layer in self.layers:
            x = layer(x, mask_bias)
        pooled = torch.tanh(self.pooler(x[:, 0]))
        return x, pooled


# --------------------------------------------------------------------------
# ViT-S/16 (Dosovitskiy et al. 2021), pre-norm blocks written like timm's.
# --------------------------------------------------------------------------

class ViTAttention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.scale = self.head_dim ** -0.5
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        attn = torch.softmax((q @ k.transpose(-2, -1)) * self.scale, dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


class ViTBlock(nn.Module):
    def __init__(self, dim, heads, mlp_ratio=4):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = ViTAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(dim, dim * mlp_ratio), nn.GELU(), nn.Linear(dim * mlp_ratio, dim))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViTSmall(nn.Module):
    def __init__(self, image=224, patch=16, dim=384, depth=12, heads=6, num_classes=1000):
        super().__init__()
        self.patch_embed = nn.Conv2d(3, dim, patch, patch)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.pos_embed = nn.Parameter(torch.randn(1, (image // patch) ** 2 + 1, dim) * 0.02)
        self.blocks = nn.Sequential(*(ViTBlock(dim, heads) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x):
        x = self.patch_embed(x).flatten(2).transpose(1, 2)  # [B, patches, dim]
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        x = self.norm(self.blocks(x))
        return self.head(x[:, 0])


# --------------------------------------------------------------------------
# YOLOv8n-style detector (Ultralytics layout: width 0.25, depth 0.33), 320x320.
# --------------------------------------------------------------------------

class ConvBNSiLU(nn.Sequential):
    def __init__(self, c_in, c_out, kernel=1, stride=1):
        super().__init__(
            nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, bias=False),
            nn.BatchNorm2d(c_out),
            nn.SiLU(inplace=True),
        )


class YoloBottleneck(nn.Module):
    def __init__(self, c, shortcut):
        super().__init__()
        self.cv1 = ConvBNSiLU(c, c, 3)
        self.cv2 = ConvBNSiLU(c, c, 3)
        self.shortcut = shortcut

    def forward(self, x):
        y = self.cv2(self.cv1(x))
        return x + y if self.shortcut else y


class C2f(nn.Module):
    """CSP block: split in two halves, chain bottlenecks on one, concat every intermediate."""

    def __init__(self, c_in, c_out, n, shortcut):
        super().__init__()
        self.c = c_out // 2
        self.cv1 = ConvBNSiLU(c_in, 2 * self.c)
        self.cv2 = ConvBNSiLU((2 + n) * self.c, c_out)
        self.m = nn.ModuleList(YoloBottleneck(self.c, shortcut) for _ in range(n))

    def forward(self, x):
        # split() rather than chunk(): torch 2.13 exports chunk as Shape/Slice arithmetic, split as Split.
        y = list(self.cv1(x).split((self.c, self.c), 1))
        y.extend(m(y[-1]) for m in self.m)
        return self.cv2(torch.cat(y, 1))


class SPPF(nn.Module):
    """Spatial pyramid pooling (fast): three chained 5x5 max pools, concatenated."""

    def __init__(self, c_in, c_out):
        super().__init__()
        self.cv1 = ConvBNSiLU(c_in, c_in // 2)
        self.cv2 = ConvBNSiLU(c_in // 2 * 4, c_out)
        self.pool = nn.MaxPool2d(5, 1, 2)

    def forward(self, x):
        y = [self.cv1(x)]
        y.extend(self.pool(y[-1]) for _ in range(3))
        return self.cv2(torch.cat(y, 1))


class DetectHead(nn.Module):
    """Anchor-free decoupled head with DFL box regression, as in YOLOv8."""

    def __init__(self, channels, strides, image, num_classes=80, reg_max=16):
        super().__init__()
        self.num_classes, self.reg_max = num_classes, reg_max
        c_box, c_cls = max(16, channels[0] // 4, reg_max * 4), max(channels[0], num_classes)
        self.box = nn.ModuleList(
            nn.Sequential(ConvBNSiLU(c, c_box, 3), ConvBNSiLU(c_box, c_box, 3), nn.Conv2d(c_box, 4 * reg_max, 1))
            for c in channels)
        self.cls = nn.ModuleList(
            nn.Sequential(ConvBNSiLU(c, c_cls, 3), ConvBNSiLU(c_cls, c_cls, 3), nn.Conv2d(c_cls, num_classes, 1))
            for c in channels)
        # The distribution focal loss bins: expected value = softmax(logits) . [0..reg_max).
        self.dfl = nn.Conv2d(reg_max, 1, 1, bias=False)
        self.dfl.weight.data[:] = torch.arange(reg_max, dtype=torch.float32).view(1, reg_max, 1, 1)
        self.dfl.requires_grad_(False)
        # Anchors depend only on the (fixed) image size, so they are buffers and export as constants,
        # as Ultralytics' exporter does after its warm-up pass.
        anchors, anchor_strides = [], []
        for s in strides:
            h = w = image // s
            ys, xs = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
            anchors.append(torch.stack((xs, ys), -1).view(-1, 2))
            anchor_strides.append(torch.full((h * w, 1), float(s)))
        self.register_buffer("anchors", torch.cat(anchors).T.unsqueeze(0))  # [1, 2, A]
        self.register_buffer("strides", torch.cat(anchor_strides).T.unsqueeze(0))  # [1, 1, A]

    def forward(self, features):
        b = features[0].shape[0]
        raw = [torch.cat((box(f), cls(f)), 1).view(b, 4 * self.reg_max + self.num_classes, -1)
               for f, box, cls in zip(features, self.box, self.cls)]
        box, cls = torch.cat(raw, 2).split((4 * self.reg_max, self.num_classes), 1)
        a = box.shape[-1]
        # DFL: [B, 4*reg_max, A] -> per side expected distance [B, 4, A].
        dist = self.dfl(box.view(b, 4, self.reg_max, a).transpose(2, 1).softmax(1)).view(b, 4, a)
        left_top, right_bottom = dist.split((2, 2), 1)
        x1y1, x2y2 = self.anchors - left_top, self.anchors + right_bottom
        xywh = torch.cat(((x1y1 + x2y2) / 2, x2y2 - x1y1), 1) * self.strides
        return torch.cat((xywh, cls.sigmoid()), 1)  # [B, 4 + num_classes, A]


class YoloStyle(nn.Module):
    def __init__(self, image=320, num_classes=80):
        super().__init__()
        self.stem = nn.Sequential(ConvBNSiLU(3, 16, 3, 2), ConvBNSiLU(16, 32, 3, 2), C2f(32, 32, 1, True))
        self.stage3 = nn.Sequential(ConvBNSiLU(32, 64, 3, 2), C2f(64, 64, 2, True))  # P3, stride 8
        self.stage4 = nn.Sequential(ConvBNSiLU(64, 128, 3, 2), C2f(128, 128, 2, True))  # P4, stride 16
        self.stage5 = nn.Sequential(ConvBNSiLU(128, 256, 3, 2), C2f(256, 256, 1, True), SPPF(256, 256))  # P5
        self.upsample = nn.Upsample(scale_factor=2, mode="nearest")
        self.top_down4 = C2f(256 + 128, 128, 1, False)
        self.top_down3 = C2f(128 + 64, 64, 1, False)
        self.down3 = ConvBNSiLU(64, 64, 3, 2)
        self.bottom_up4 = C2f(64 + 128, 128, 1, False)
        self.down4 = ConvBNSiLU(128, 128, 3, 2)
        self.bottom_up5 = C2f(128 + 256, 256, 1, False)
        self.detect = DetectHead((64, 128, 256), (8, 16, 32), image, num_classes)

    def forward(self, x):
        p3 = self.stage3(self.stem(x))
        p4 = self.stage4(p3)
        p5 = self.stage5(p4)
        n4 = self.top_down4(torch.cat((self.upsample(p5), p4), 1))
        out3 = self.top_down3(torch.cat((self.upsample(n4), p3), 1))
        out4 = self.bottom_up4(torch.cat((self.down3(out3), n4), 1))
        out5 = self.bottom_up5(torch.cat((self.down4(out4), p5), 1))
        return self.detect([out3, out4, out5])


# --------------------------------------------------------------------------
# Registry and export.
# --------------------------------------------------------------------------

@dataclass(frozen=True)
class ModelSpec:
    factory: Callable[[], nn.Module]
    make_inputs: Callable[[int, torch.Generator], tuple[torch.Tensor, ...]]
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]


def _images(size: int):
    return lambda batch, gen: (torch.randn(batch, 3, size, size, generator=gen),)


def _bert_inputs(batch: int, gen: torch.Generator, seq: int = 128, vocab: int = 30522):
    input_ids = torch.randint(0, vocab, (batch, seq), generator=gen)
    # Right padding with a random length per row, at least half the sequence.
    lengths = torch.randint(seq // 2, seq + 1, (batch, 1), generator=gen)
    attention_mask = (torch.arange(seq) < lengths).to(torch.int64)
    return input_ids, attention_mask


MODELS: dict[str, ModelSpec] = {
    "mobilenet_v2": ModelSpec(MobileNetV2, _images(224), ("input",), ("logits",)),
    "resnet50": ModelSpec(ResNet50, _images(224), ("input",), ("logits",)),
    "bert_base": ModelSpec(BertBase, _bert_inputs, ("input_ids", "attention_mask"),
                           ("last_hidden_state", "pooler_output")),
    # BERT-base's layer, 6 of them: every kernel has BERT-base's shapes (benchmarks/tuning.py: a
    # model that shares its kernels with a tuned one).
    "bert_6layer": ModelSpec(functools.partial(BertBase, layers=6), _bert_inputs, ("input_ids", "attention_mask"),
                             ("last_hidden_state", "pooler_output")),
    "vit_small": ModelSpec(ViTSmall, _images(224), ("input",), ("logits",)),
    "yolo_style": ModelSpec(YoloStyle, _images(320), ("images",), ("output0",)),
}


@torch.no_grad()
def _randomize_norm_layers(model: nn.Module, spec: ModelSpec, gen: torch.Generator) -> None:
    """Gives normalization layers the non-trivial parameters a trained model has.

    Default init (scale 1, shift 0, BN mean 0 / var 1) makes every LayerNorm
    identical, which the exporter deduplicates into Identity nodes, and makes
    BN a no-op that lets activations blow up through deep nets. So: random
    affine parameters, and BN running statistics from a few training-mode
    passes over random inputs.
    """
    norms = [m for m in model.modules() if isinstance(m, (nn.LayerNorm, nn.BatchNorm2d))]
    for norm in norms:
        norm.weight.normal_(1.0, 0.1, generator=gen)
        norm.bias.normal_(0.0, 0.05, generator=gen)
    batch_norms = [m for m in norms if isinstance(m, nn.BatchNorm2d)]
    if not batch_norms:
        return
    for bn in batch_norms:
        bn.momentum = None  # cumulative average over the calibration passes
    model.train()
    for _ in range(2):
        model(*spec.make_inputs(4, gen))


def build(name: str) -> nn.Module:
    """The model ``name`` in eval mode, with weights fixed by ``SEED``."""
    spec = MODELS[name]
    torch.manual_seed(SEED)
    model = spec.factory()
    _randomize_norm_layers(model, spec, torch.Generator().manual_seed(SEED))
    return model.eval()


def example_inputs(name: str, batch: int = 1, seed: int = SEED) -> tuple[torch.Tensor, ...]:
    return MODELS[name].make_inputs(batch, torch.Generator().manual_seed(seed))


def _export_module(model, name, path, batch, dynamic_batch, opset) -> Path:
    spec = MODELS[name]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    dynamic_axes = None
    if dynamic_batch:
        dynamic_axes = {n: {0: "batch"} for n in spec.input_names + spec.output_names}
    with warnings.catch_warnings(), torch.no_grad():
        # The TorchScript exporter is deprecated in favour of dynamo; we want it on purpose.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(
            model, example_inputs(name, batch), str(path),
            input_names=list(spec.input_names), output_names=list(spec.output_names),
            dynamic_axes=dynamic_axes, opset_version=opset, dynamo=False,
        )
    return path


def export(name: str, path, batch: int = 1, dynamic_batch: bool = False, opset: int = 17) -> Path:
    """Exports benchmark model ``name`` to ``path`` (TorchScript exporter) and returns the path."""
    if name not in MODELS:
        raise KeyError(f"unknown model {name!r}; choose from {', '.join(MODELS)}")
    return _export_module(build(name), name, path, batch, dynamic_batch, opset)


def errors_vs_torch(model: nn.Module, name: str, path, batch: int = 1) -> dict[str, tuple[float, float]]:
    """Per output: (max |onnxruntime - torch|, max |torch|), on inputs other than the export's.

    The magnitude is returned too because some outputs (YOLO boxes, in pixels)
    are large enough that float32 rounding alone exceeds a fixed absolute tolerance.
    """
    import onnxruntime as ort

    inputs = example_inputs(name, batch, seed=SEED + 1)
    with torch.no_grad():
        expected = model(*inputs)
    expected = expected if isinstance(expected, tuple) else (expected,)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    spec = MODELS[name]
    actual = session.run(list(spec.output_names), {n: t.numpy() for n, t in zip(spec.input_names, inputs)})
    return {
        n: (float((torch.from_numpy(a) - e).abs().max()), float(e.abs().max()))
        for n, a, e in zip(spec.output_names, actual, expected)
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, help="directory for the .onnx files")
    parser.add_argument("--only", help=f"comma-separated subset of: {', '.join(MODELS)}")
    parser.add_argument("--dynamic-batch", action="store_true", help="make the batch dim symbolic")
    parser.add_argument("--batch", type=int, default=1, help="batch size of the example inputs")
    parser.add_argument("--opset", type=int, default=17)
    parser.add_argument("--verify", action="store_true", help="compare onnxruntime against torch")
    args = parser.parse_args(argv)

    names = args.only.split(",") if args.only else list(MODELS)
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        parser.error(f"unknown model(s): {', '.join(unknown)}")
    for name in names:
        start = time.perf_counter()
        model = build(name)
        path = _export_module(model, name, args.out / f"{name}.onnx", args.batch, args.dynamic_batch, args.opset)
        line = f"{name}: {path} ({path.stat().st_size / 2**20:.1f} MiB, {time.perf_counter() - start:.1f} s)"
        if args.verify:
            errors = errors_vs_torch(model, name, path, args.batch)
            line += "; vs torch: " + ", ".join(
                f"{out} max abs err {err:.1e} (|ref| <= {scale:.1e})" for out, (err, scale) in errors.items())
        print(line, flush=True)


if __name__ == "__main__":
    main()
