#!/usr/bin/env python3
"""Zoo producer "paddle2onnx": PaddlePaddle models exported the way Paddle users do it.

Each model is built with random initialisation (``paddle.seed(0)``, nothing downloaded): classifiers from
Paddle's own zoo (``paddle.vision.models``, ``pretrained=False``) and OCR networks written with Paddle
layers after PaddleOCR's PP-OCR designs (DBNet detector, CRNN and SVTR-style recognisers, text-direction
classifier). The export path is the user's one: ``paddle.jit.save`` with an ``InputSpec`` whose batch
(and for the OCR nets H/W) is ``None``, then ``paddle2onnx.export`` with its defaults (opset 7 requested
and auto-upgraded to what the ops need; polygraphy optimisation on) or with ``opset_version=11``.

paddle2onnx declares dynamic dims as ``dim_value: -1`` rather than ``dim_param``; that is kept as is.

Usage (inside the venv from requirements-paddle.txt):
    python benchmarks/zoo/export_paddle.py --out DIR [--only a,b] [--list] [--force]
"""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("GLOG_minloglevel", "2")  # paddle's C++ INFO logging drowns the script's own output

import paddle  # noqa: E402
import paddle.nn as nn  # noqa: E402
import paddle.nn.functional as F  # noqa: E402
from paddle.static import InputSpec  # noqa: E402

from _exporter_cli import dims_note, run  # noqa: E402


# ---------------------------------------------------------------------------------------------------------
# PP-OCR style building blocks (after PaddleOCR ppocr/modeling/backbones/det_mobilenet_v3.py & co.)
# ---------------------------------------------------------------------------------------------------------

def make_divisible(v, divisor=8, min_value=None):
    min_value = min_value or divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


class ConvBNLayer(nn.Layer):
    def __init__(self, in_c, out_c, k, stride, groups=1, act=None):
        super().__init__()
        self.conv = nn.Conv2D(in_c, out_c, k, stride=stride, padding=(k - 1) // 2, groups=groups,
                              bias_attr=False)
        self.bn = nn.BatchNorm2D(out_c)
        self.act = act

    def forward(self, x):
        x = self.bn(self.conv(x))
        if self.act == "relu":
            x = F.relu(x)
        elif self.act == "hardswish":
            x = F.hardswish(x)
        return x


class SEModule(nn.Layer):
    def __init__(self, c, reduction=4):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2D(1)
        self.conv1 = nn.Conv2D(c, c // reduction, 1)
        self.conv2 = nn.Conv2D(c // reduction, c, 1)

    def forward(self, x):
        s = F.relu(self.conv1(self.pool(x)))
        # PaddleOCR's SE gate: hardsigmoid with slope 0.2 / offset 0.5 (not the 1/6 of torch's)
        s = F.hardsigmoid(self.conv2(s), slope=0.2, offset=0.5)
        return x * s


class ResidualUnit(nn.Layer):
    def __init__(self, in_c, mid_c, out_c, k, stride, use_se, act):
        super().__init__()
        self.shortcut = stride == 1 and in_c == out_c
        self.expand = ConvBNLayer(in_c, mid_c, 1, 1, act=act)
        self.dw = ConvBNLayer(mid_c, mid_c, k, stride, groups=mid_c, act=act)
        self.se = SEModule(mid_c) if use_se else None
        self.linear = ConvBNLayer(mid_c, out_c, 1, 1)

    def forward(self, x):
        y = self.dw(self.expand(x))
        if self.se is not None:
            y = self.se(y)
        y = self.linear(y)
        return x + y if self.shortcut else y


class MobileNetV3Det(nn.Layer):
    """MobileNetV3-large (scale 0.5) returning the 1/4, 1/8, 1/16, 1/32 feature maps."""

    CFG = [  # k, exp, c, se, act, stride
        [3, 16, 16, False, "relu", 1], [3, 64, 24, False, "relu", 2], [3, 72, 24, False, "relu", 1],
        [5, 72, 40, True, "relu", 2], [5, 120, 40, True, "relu", 1], [5, 120, 40, True, "relu", 1],
        [3, 240, 80, False, "hardswish", 2], [3, 200, 80, False, "hardswish", 1],
        [3, 480, 112, True, "hardswish", 1], [3, 672, 112, True, "hardswish", 1],
        [5, 672, 160, True, "hardswish", 2], [5, 960, 160, True, "hardswish", 1],
    ]

    def __init__(self, scale=0.5):
        super().__init__()
        c = make_divisible(16 * scale)
        self.stem = ConvBNLayer(3, c, 3, 2, act="hardswish")
        self.stages, self.out_channels, blocks = nn.LayerList(), [], []
        for i, (k, exp, out, se, act, s) in enumerate(self.CFG):
            if s == 2 and i > 2:  # close a stage before each down-sampling (after the 1/4 stage)
                self.out_channels.append(c)
                self.stages.append(nn.Sequential(*blocks))
                blocks = []
            blocks.append(ResidualUnit(c, make_divisible(scale * exp), make_divisible(scale * out), k, s, se, act))
            c = make_divisible(scale * out)
        blocks.append(ConvBNLayer(c, make_divisible(scale * 960), 1, 1, act="hardswish"))
        self.stages.append(nn.Sequential(*blocks))
        self.out_channels.append(make_divisible(scale * 960))

    def forward(self, x):
        x, outs = self.stem(x), []
        for stage in self.stages:
            x = stage(x)
            outs.append(x)
        return outs


class DBFPN(nn.Layer):
    """PaddleOCR's DBFPN: 1x1 laterals, top-down nearest upsampling, 3x3 smoothing, concat at 1/4."""

    def __init__(self, in_channels, out_channels=96):
        super().__init__()
        self.ins = nn.LayerList([nn.Conv2D(c, out_channels, 1, bias_attr=False) for c in in_channels])
        self.ps = nn.LayerList([nn.Conv2D(out_channels, out_channels // 4, 3, padding=1, bias_attr=False)
                                for _ in in_channels])

    def forward(self, x):
        c2, c3, c4, c5 = x
        in5, in4, in3, in2 = self.ins[3](c5), self.ins[2](c4), self.ins[1](c3), self.ins[0](c2)
        out4 = in4 + F.upsample(in5, scale_factor=2, mode="nearest", align_mode=1)
        out3 = in3 + F.upsample(out4, scale_factor=2, mode="nearest", align_mode=1)
        out2 = in2 + F.upsample(out3, scale_factor=2, mode="nearest", align_mode=1)
        p5, p4, p3, p2 = self.ps[3](in5), self.ps[2](out4), self.ps[1](out3), self.ps[0](out2)
        # the deepest two branches go up bilinearly (as in PP-OCRv3's RSEFPN variants / LKPAN users),
        # so the graph carries both Resize modes with scale factors
        p5 = F.upsample(p5, scale_factor=8, mode="bilinear", align_corners=False)
        p4 = F.upsample(p4, scale_factor=4, mode="bilinear", align_corners=False)
        p3 = F.upsample(p3, scale_factor=2, mode="nearest", align_mode=1)
        return paddle.concat([p5, p4, p3, p2], axis=1)


class DBHead(nn.Layer):
    def __init__(self, c):
        super().__init__()
        self.conv = ConvBNLayer(c, c // 4, 3, 1, act="relu")
        self.up1 = nn.Conv2DTranspose(c // 4, c // 4, 2, stride=2)
        self.bn1 = nn.BatchNorm2D(c // 4)
        self.up2 = nn.Conv2DTranspose(c // 4, 1, 2, stride=2)

    def forward(self, x):
        x = F.relu(self.bn1(self.up1(self.conv(x))))
        return F.sigmoid(self.up2(x))  # the shrink (probability) map, what inference returns


class DBNet(nn.Layer):
    def __init__(self):
        super().__init__()
        self.backbone = MobileNetV3Det(0.5)
        self.neck = DBFPN(self.backbone.out_channels, 96)
        self.head = DBHead(96)

    def forward(self, x):
        return self.head(self.neck(self.backbone(x)))


class MobileNetV3Rec(nn.Layer):
    """MobileNetV3-small-ish recognition backbone: (2, 1) strides keep the width for the sequence."""

    CFG = [  # k, exp, c, se, act, stride
        [3, 16, 16, True, "relu", (2, 1)], [3, 72, 24, False, "relu", (2, 1)],
        [3, 88, 24, False, "relu", 1], [5, 96, 40, True, "hardswish", (2, 1)],
        [5, 240, 40, True, "hardswish", 1], [5, 120, 48, True, "hardswish", 1],
        [5, 288, 96, True, "hardswish", 1], [5, 576, 96, True, "hardswish", 1],
    ]

    def __init__(self, scale=0.5, pool=(2, 2)):
        super().__init__()
        c = make_divisible(16 * scale)
        layers = [ConvBNLayer(3, c, 3, 2, act="hardswish")]
        for k, exp, out, se, act, s in self.CFG:
            layers.append(ResidualUnit(c, make_divisible(scale * exp), make_divisible(scale * out), k, s, se, act))
            c = make_divisible(scale * out)
        self.out_channels = make_divisible(scale * 576)
        layers.append(ConvBNLayer(c, self.out_channels, 1, 1, act="hardswish"))
        self.body = nn.Sequential(*layers)
        self.pool = nn.MaxPool2D(pool, pool)

    def forward(self, x):
        return self.pool(self.body(x))


class Im2Seq(nn.Layer):
    def forward(self, x):
        # (B, C, 1, W) -> (B, W, C), exactly as PaddleOCR's neck does it
        x = x.squeeze(axis=2)
        return x.transpose([0, 2, 1])


class CTCHead(nn.Layer):
    def __init__(self, c, n_classes):
        super().__init__()
        self.fc = nn.Linear(c, n_classes)

    def forward(self, x):
        return F.softmax(self.fc(x), axis=2)  # PaddleOCR applies the softmax at inference


class CRNN(nn.Layer):
    """rec_mv3 + BiLSTM (2 layers) + CTC: PaddleOCR's 'CRNN' mobile recogniser, input 32 x W."""

    def __init__(self, n_classes=97):
        super().__init__()
        self.backbone = MobileNetV3Rec(0.5)
        self.im2seq = Im2Seq()
        self.rnn = nn.LSTM(self.backbone.out_channels, 48, num_layers=2, direction="bidirect")
        self.head = CTCHead(96, n_classes)

    def forward(self, x):
        seq, _ = self.rnn(self.im2seq(self.backbone(x)))
        return self.head(seq)


class Attention(nn.Layer):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads, self.scale = heads, (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        # PaddleOCR's SVTR reshape: 0 copies the batch dim, -1 infers the token count (dynamic W)
        qkv = self.qkv(x).reshape((0, -1, 3, self.heads, x.shape[-1] // self.heads)).transpose((2, 0, 3, 1, 4))
        q, k, v = qkv[0] * self.scale, qkv[1], qkv[2]
        attn = F.softmax(q.matmul(k.transpose((0, 1, 3, 2))), axis=-1)
        x = attn.matmul(v).transpose((0, 2, 1, 3)).reshape((0, -1, x.shape[-1]))
        return self.proj(x)


class SVTRBlock(nn.Layer):
    def __init__(self, dim, heads, mlp_ratio=2.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, epsilon=1e-6)
        self.mixer = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, epsilon=1e-6)
        self.fc1 = nn.Linear(dim, int(dim * mlp_ratio))
        self.fc2 = nn.Linear(int(dim * mlp_ratio), dim)

    def forward(self, x):
        x = x + self.mixer(self.norm1(x))
        return x + self.fc2(F.swish(self.fc1(self.norm2(x))))


class EncoderWithSVTR(nn.Layer):
    """PP-OCRv3's SVTR neck: conv reduce, global-mixing blocks over H*W tokens, conv back, shortcut concat."""

    def __init__(self, c, dims=64, depth=2, heads=8, hidden=120):
        super().__init__()
        self.conv1 = ConvBNLayer(c, c // 8, 3, 1, act="hardswish")
        self.conv2 = ConvBNLayer(c // 8, hidden, 1, 1, act="hardswish")
        self.blocks = nn.LayerList([SVTRBlock(hidden, heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(hidden, epsilon=1e-6)
        self.conv3 = ConvBNLayer(hidden, c, 1, 1, act="hardswish")
        self.conv4 = ConvBNLayer(2 * c, c // 8, 3, 1, act="hardswish")
        self.conv1x1 = ConvBNLayer(c // 8, dims, 1, 1, act="hardswish")
        self.out_channels = dims

    def forward(self, x):
        h = x
        z = self.conv2(self.conv1(x))
        B, C, H, W = z.shape  # symbolic under jit.save: these become Shape/Gather ops
        z = z.flatten(2).transpose([0, 2, 1])
        for blk in self.blocks:
            z = blk(z)
        z = self.norm(z).reshape([-1, H, W, C]).transpose([0, 3, 1, 2])
        z = self.conv3(z)
        z = self.conv4(paddle.concat((h, z), axis=1))
        return self.conv1x1(z)


class SVTRRec(nn.Layer):
    """PP-OCRv3-style recogniser: conv backbone (avg-pooled to H=1), SVTR neck, CTC head; input 48 x W."""

    def __init__(self, n_classes=97):
        super().__init__()
        self.backbone = MobileNetV3Rec(0.5, pool=(3, 2))
        self.backbone.pool = nn.AvgPool2D((3, 2), (3, 2))
        self.neck = EncoderWithSVTR(self.backbone.out_channels)
        self.im2seq = Im2Seq()
        self.head = CTCHead(self.neck.out_channels, n_classes)

    def forward(self, x):
        return self.head(self.im2seq(self.neck(self.backbone(x))))


class TextDirectionCls(nn.Layer):
    """PaddleOCR's cls_mv3: MobileNetV3-small scale 0.35 (Paddle's own class) + ClsHead softmax."""

    def __init__(self):
        super().__init__()
        self.backbone = paddle.vision.models.MobileNetV3Small(scale=0.35, num_classes=-1, with_pool=True)
        # paddle.vision rounds the last conv's width its own way: ask the backbone rather than recompute it
        width = self.backbone(paddle.zeros([1, 3, 48, 192])).shape[1]
        self.fc = nn.Linear(width, 2)

    def forward(self, x):
        return F.softmax(self.fc(paddle.flatten(self.backbone(x), 1)), axis=1)


# ---------------------------------------------------------------------------------------------------------
# registry
# ---------------------------------------------------------------------------------------------------------

def _f32(shape, low, high):
    return {"shape": shape, "dtype": "float32", "low": low, "high": high}


PPOCR = (-1.0, 1.0)  # ImageNet-normalised pixels span about (-2.0, 2.5); PaddleOCR normalises (img / 255 - 0.5) / 0.5

_vm = paddle.vision.models
DEFAULT = None  # paddle2onnx.export's own default (opset_version=7 + auto_upgrade_opset)

# name -> (builder, architecture, task, InputSpec shape, opset_version, run shape, value range)
MODELS = {
    "paddle_mobilenet_v3_small": (lambda: _vm.mobilenet_v3_small(pretrained=False),
                                  "paddle.vision mobilenet_v3_small", "classification",
                                  [None, 3, 224, 224], DEFAULT, [1, 3, 224, 224], (-2.0, 2.5)),
    "paddle_mobilenet_v2_op11": (lambda: _vm.mobilenet_v2(pretrained=False),
                                 "paddle.vision mobilenet_v2", "classification",
                                 [None, 3, 224, 224], 11, [1, 3, 224, 224], (-2.0, 2.5)),
    "paddle_resnet18": (lambda: _vm.resnet18(pretrained=False), "paddle.vision resnet18", "classification",
                        [None, 3, None, None], DEFAULT, [1, 3, 224, 224], (-2.0, 2.5)),
    "paddle_shufflenet_v2_x0_5": (lambda: _vm.shufflenet_v2_x0_5(pretrained=False),
                                  "paddle.vision shufflenet_v2_x0_5", "classification",
                                  [None, 3, 224, 224], DEFAULT, [1, 3, 224, 224], (-2.0, 2.5)),
    "paddle_ppocr_det_db": (DBNet, "PP-OCR style DBNet (MobileNetV3-large x0.5, DBFPN, ConvTranspose head)",
                            "text detection", [None, 3, None, None], DEFAULT, [1, 3, 480, 640], PPOCR),
    # the default already auto-upgrades the DBNet to opset 11 (Resize): also export it at 13 (Squeeze,
    # Split, ReduceX with axes as inputs)
    "paddle_ppocr_det_db_op13": (DBNet, "PP-OCR style DBNet (MobileNetV3-large x0.5, DBFPN, ConvTranspose head)",
                                 "text detection", [None, 3, None, None], 13, [1, 3, 480, 640], PPOCR),
    "paddle_ppocr_rec_crnn_op11": (CRNN, "PP-OCR style CRNN (rec MobileNetV3 x0.5, 2-layer BiLSTM, CTC softmax)",
                                   "text recognition", [None, 3, 32, None], 11, [1, 3, 32, 320], PPOCR),
    "paddle_ppocr_rec_svtr": (SVTRRec, "PP-OCRv3 style recogniser (MobileNetV3 x0.5, SVTR global-mixing neck, "
                              "CTC softmax)", "text recognition", [None, 3, 48, None], DEFAULT,
                              [1, 3, 48, 320], PPOCR),
    "paddle_ppocr_cls": (TextDirectionCls, "PP-OCR text-direction classifier (paddle.vision MobileNetV3Small "
                         "x0.35 + softmax head)", "classification", [None, 3, 48, 192], DEFAULT,
                         [1, 3, 48, 192], PPOCR),
}


def export_one(name: str, out: Path, force: bool) -> bool:
    import onnx
    import paddle2onnx

    build, arch, task, spec_shape, opset, run_shape, (low, high) = MODELS[name]
    dst, side = out / f"{name}.onnx", out / f"{name}.json"
    if dst.exists() and side.exists() and not force:
        return False
    paddle.seed(0)
    model = build()
    model.eval()
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        prefix = os.path.join(tmp, "inference")
        paddle.jit.save(model, prefix, input_spec=[InputSpec(list(spec_shape), "float32", name="x")])
        # paddle 3 writes the PIR program as .json; older paddle (and old PaddleOCR dumps) used .pdmodel
        model_file = prefix + ".json" if os.path.exists(prefix + ".json") else prefix + ".pdmodel"
        kwargs = {} if opset is None else {"opset_version": opset}
        if dst.exists():
            dst.unlink()
        try:
            paddle2onnx.export(model_file, prefix + ".pdiparams", save_file=str(dst), **kwargs)
        except SystemExit as e:  # paddle2onnx's logging.error() ends in sys.exit(-1) on conversion errors
            raise RuntimeError(f"paddle2onnx exited ({e.code}); its error is logged above") from None
    # paddle2onnx logs conversion errors instead of raising them: check that a model came out
    if not dst.exists():
        raise RuntimeError("paddle2onnx wrote no model (see its log above)")
    m = onnx.load(str(dst))
    real_opset = next(o.version for o in m.opset_import if o.domain in ("", "ai.onnx"))
    requested = "paddle2onnx.export default (opset_version=7, auto_upgrade_opset=True)" if opset is None \
        else f"opset_version={opset}"
    spec = [-1 if d is None else d for d in spec_shape]
    notes = [f"paddle.jit.save InputSpec({spec}) -> paddle2onnx.export, {requested}",
             dims_note(m), f"IR version {m.ir_version}"]
    if not m.graph.initializer:
        # at opset < 8 (IR 3) paddle2onnx emits every weight as a Constant node; its polygraphy folding step
        # then fails ("... in initializer but not in graph input") and the unfolded graph is saved
        notes.append("no initializers: all weights are Constant nodes; graph not constant-folded")
    notes.append(f"export took {time.time() - t0:.1f} s")
    meta = {"name": name, "producer": "paddle2onnx",
            "producer_version": f"paddlepaddle {paddle.__version__}, paddle2onnx {paddle2onnx.__version__}",
            "architecture": arch, "task": task, "opset": real_opset,
            "inputs": {"x": _f32(run_shape, low, high)}, "notes": "; ".join(notes)}
    side.write_text(json.dumps(meta, indent=1) + "\n")
    return True


def main() -> int:
    return run(__doc__.splitlines()[0], MODELS, export_one,
               setup=lambda: logging.getLogger().setLevel(logging.WARNING))


if __name__ == "__main__":
    sys.exit(main())
