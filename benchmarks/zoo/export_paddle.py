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
    def __init__(self, c, reduction=4, slope=0.2):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2D(1)
        self.conv1 = nn.Conv2D(c, c // reduction, 1)
        self.conv2 = nn.Conv2D(c // reduction, c, 1)
        self.slope = slope

    def forward(self, x):
        s = F.relu(self.conv1(self.pool(x)))
        # PaddleOCR's SE gate: hardsigmoid with slope 0.2 / offset 0.5 (not the 1/6 of torch's)
        s = F.hardsigmoid(self.conv2(s), slope=self.slope, offset=0.5)
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
# PP-LCNet (PaddleClas ppcls/arch/backbone/legendary_models/pp_lcnet.py) and a PicoDet-style detector
# (PaddleDetection: LCNet backbone, lite CSP-PAN-like neck, GFL head with a distribution-focal integral,
# anchor-free decoding, multiclass_nms3)
# ---------------------------------------------------------------------------------------------------------

LCNET_CFG = {  # k, in_c, out_c, stride, use_se (x1.0 widths)
    "blocks2": [[3, 16, 32, 1, False]],
    "blocks3": [[3, 32, 64, 2, False], [3, 64, 64, 1, False]],
    "blocks4": [[3, 64, 128, 2, False], [3, 128, 128, 1, False]],
    "blocks5": [[3, 128, 256, 2, False]] + [[5, 256, 256, 1, False]] * 5,
    "blocks6": [[5, 256, 512, 2, True], [5, 512, 512, 1, True]],
}


def kaiming_init(model: nn.Layer) -> nn.Layer:
    """PaddleClas / PaddleDetection build these nets with KaimingNormal conv weights (paddle's default init makes
    the hardswish stacks' activations vanish: 1e-18 at stride 32, every output the same) and trained BatchNorm
    statistics; seeded stand-ins for both."""
    for layer in model.sublayers():
        if isinstance(layer, nn.Conv2D):
            w = layer.weight
            fan_in = w.shape[1] * w.shape[2] * w.shape[3]
            layer.weight.set_value(paddle.randn(w.shape) * (2.0 / fan_in) ** 0.5)
        elif isinstance(layer, nn.BatchNorm2D):
            c = layer.weight.shape[0]
            layer.weight.set_value(paddle.rand([c]) + 0.5)
            layer.bias.set_value(paddle.rand([c]) * 0.4 - 0.2)
            layer._mean.set_value(paddle.rand([c]) * 0.4 - 0.2)
            layer._variance.set_value(paddle.rand([c]) * 1.5 + 0.5)
    return model


class LCNetSE(SEModule):
    """PP-LCNet's SE gate: paddle's default hardsigmoid (slope 1/6), not PaddleOCR's 0.2."""

    def __init__(self, c, reduction=4):
        super().__init__(c, reduction, slope=0.1666667)


class DepthwiseSeparable(nn.Layer):
    def __init__(self, in_c, out_c, k, stride, use_se):
        super().__init__()
        self.dw = ConvBNLayer(in_c, in_c, k, stride, groups=in_c, act="hardswish")
        self.se = LCNetSE(in_c) if use_se else None
        self.pw = ConvBNLayer(in_c, out_c, 1, 1, act="hardswish")

    def forward(self, x):
        x = self.dw(x)
        if self.se is not None:
            x = self.se(x)
        return self.pw(x)


class PPLCNet(nn.Layer):
    """PP-LCNet: a stem conv, depthwise-separable blocks (3x3 then 5x5, SE only in the last stage), hardswish
    everywhere; with ``num_classes`` the classification head (pool, 1x1 conv to 1280, hardswish, dropout, fc),
    without it the stride-8/16/32 feature maps for a detector."""

    def __init__(self, scale=0.5, num_classes=None):
        super().__init__()
        w = lambda c: make_divisible(c * scale)  # noqa: E731
        self.stem = ConvBNLayer(3, w(16), 3, 2, act="hardswish")
        self.stages = nn.LayerList([
            nn.Sequential(*[DepthwiseSeparable(w(i), w(o), k, s, se) for k, i, o, s, se in LCNET_CFG[name]])
            for name in ("blocks2", "blocks3", "blocks4", "blocks5", "blocks6")])
        self.out_channels = [w(LCNET_CFG[name][-1][2]) for name in ("blocks4", "blocks5", "blocks6")]
        self.num_classes = num_classes
        if num_classes:
            self.pool = nn.AdaptiveAvgPool2D(1)
            self.last_conv = nn.Conv2D(w(512), 1280, 1, bias_attr=False)
            self.dropout = nn.Dropout(0.2, mode="downscale_in_infer")
            self.fc = nn.Linear(1280, num_classes)

    def forward(self, x):
        x = self.stem(x)
        feats = []
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i >= 2:
                feats.append(x)
        if not self.num_classes:
            return feats
        x = F.hardswish(self.last_conv(self.pool(x)))
        return F.softmax(self.fc(paddle.flatten(self.dropout(x), 1)), axis=-1)


class PicoDetLike(nn.Layer):
    """PicoDet-S style: LCNet x0.75 features at strides 8/16/32, a lite PAN (1x1 reduce, nearest top-down,
    depthwise stride-2 bottom-up), a shared-conv GFL head per level (sigmoid class scores, 4 x (reg_max + 1)
    distance bins), the distribution-focal integral (softmax over the bins, matmul with 0..reg_max), anchor-point
    decoding to x1y1x2y2 and multiclass_nms3 (what PaddleDetection exports with post-processing on)."""

    def __init__(self, num_classes=10, ch=64, reg_max=7, strides=(8, 16, 32)):
        super().__init__()
        self.backbone = kaiming_init(PPLCNet(0.75))
        self.reduce = nn.LayerList([ConvBNLayer(c, ch, 1, 1, act="hardswish") for c in self.backbone.out_channels])
        self.down = nn.LayerList([ConvBNLayer(ch, ch, 3, 2, groups=ch, act="hardswish") for _ in strides[1:]])
        self.head_convs = nn.LayerList([nn.Sequential(ConvBNLayer(ch, ch, 5, 1, groups=ch, act="hardswish"),
                                                      ConvBNLayer(ch, ch, 1, 1, act="hardswish"))
                                        for _ in strides])
        kaiming_init(self.reduce), kaiming_init(self.down), kaiming_init(self.head_convs)
        self.gfl = nn.LayerList([nn.Conv2D(ch, num_classes + 4 * (reg_max + 1), 1) for _ in strides])
        # spread the random head's outputs as training does: with the default init every class score is
        # sigmoid(~0) = 0.5 and NMS would choose among exact ties
        for conv in self.gfl:
            conv.weight.set_value(paddle.randn(conv.weight.shape) * 0.03)
            conv.bias.set_value(paddle.randn(conv.bias.shape) * 0.5 - 2.0)
        self.num_classes, self.reg_max, self.strides = num_classes, reg_max, strides
        self.register_buffer("project", paddle.arange(reg_max + 1, dtype="float32").reshape([-1, 1]))

    def forward(self, x):
        c3, c4, c5 = [r(f) for r, f in zip(self.reduce, self.backbone(x))]
        # top-down
        p4 = c4 + F.upsample(c5, scale_factor=2, mode="nearest")
        p3 = c3 + F.upsample(p4, scale_factor=2, mode="nearest")
        # bottom-up
        n4 = p4 + self.down[0](p3)
        n5 = c5 + self.down[1](n4)
        boxes, scores = [], []
        for feat, conv, gfl, stride in zip((p3, n4, n5), self.head_convs, self.gfl, self.strides):
            out = gfl(conv(feat))
            h, w = feat.shape[2], feat.shape[3]
            cls, reg = paddle.split(out, [self.num_classes, 4 * (self.reg_max + 1)], axis=1)
            cls = F.sigmoid(cls).flatten(2)  # [B, C, HW]
            reg = reg.flatten(2).transpose([0, 2, 1]).reshape([-1, h * w, 4, self.reg_max + 1])
            dist = paddle.matmul(F.softmax(reg, axis=-1), self.project).squeeze(-1) * stride  # [B, HW, 4]
            ys, xs = paddle.meshgrid(paddle.arange(h, dtype="float32"), paddle.arange(w, dtype="float32"))
            centers = (paddle.stack([xs, ys], axis=-1).reshape([1, -1, 2]) + 0.5) * stride
            boxes.append(paddle.concat([centers - dist[:, :, :2], centers + dist[:, :, 2:]], axis=-1))
            scores.append(cls)
        boxes, scores = paddle.concat(boxes, axis=1), paddle.concat(scores, axis=2)
        # PaddleDetection's ppdet.modeling.ops.multiclass_nms (dygraph branch)
        out, _, num = paddle._C_ops.multiclass_nms3(boxes, scores, None, 0.025, 1000, 100, 0.6, True, 1.0, -1)
        return out, num


class PPYOLOTinyLike(nn.Layer):
    """PP-YOLO-Tiny style detector: LCNet x0.5 features at strides 16/32, a 1x1+depthwise head per level with
    3 anchors x (5 + classes) channels, ``paddle.vision.ops.yolo_box`` decoding (sigmoid, anchor scaling, clip to
    the image) and ``multiclass_nms3`` (PaddleDetection's YOLOv3Head + YOLOBox + MultiClassNMS at export)."""

    ANCHORS = [[10, 15, 24, 36, 72, 42], [35, 87, 102, 96, 60, 170]]  # per level: 3 (w, h) pairs

    def __init__(self, num_classes=8, size=320):
        super().__init__()
        self.backbone = kaiming_init(PPLCNet(0.5))
        chans = self.backbone.out_channels[1:]
        self.heads = nn.LayerList([nn.Sequential(ConvBNLayer(c, 64, 1, 1, act="relu"),
                                                 ConvBNLayer(64, 64, 5, 1, groups=64, act="relu"))
                                   for c in chans])
        kaiming_init(self.heads)
        self.outs = nn.LayerList([nn.Conv2D(64, 3 * (5 + num_classes), 1) for _ in chans])
        for conv in self.outs:  # spread the random scores (no ties for NMS to order by rounding)
            conv.weight.set_value(paddle.randn(conv.weight.shape) * 0.05)
            conv.bias.set_value(paddle.randn(conv.bias.shape) * 0.5)
        self.num_classes, self.size = num_classes, size

    def forward(self, x):
        feats = self.backbone(x)[1:]
        im_size = paddle.full([1, 2], self.size, dtype="int32")
        boxes, scores = [], []
        for feat, head, out, anchors, stride in zip(feats, self.heads, self.outs, self.ANCHORS, (16, 32)):
            b, s = paddle.vision.ops.yolo_box(out(head(feat)), im_size, anchors, self.num_classes, 0.005, stride,
                                              clip_bbox=True, scale_x_y=1.05)
            boxes.append(b)
            scores.append(s)
        boxes = paddle.concat(boxes, axis=1)
        scores = paddle.concat(scores, axis=1).transpose([0, 2, 1])
        out, _, num = paddle._C_ops.multiclass_nms3(boxes, scores, None, 0.01, 1000, 100, 0.45, False, 1.0, -1)
        return out, num


class SRNetOps(nn.Layer):
    """Restoration-style net with the image ops paddle2onnx maps one by one: reflect Pad2D, InstanceNorm2D,
    GroupNorm, channel-last LayerNorm + GELU, an affine warp (grid from meshgrid @ theta) + grid_sample,
    pixel_shuffle x2 and a bicubic interpolate."""

    def __init__(self, ch=32):
        super().__init__()
        self.pad = nn.Pad2D(2, mode="reflect")
        self.head = nn.Conv2D(3, ch, 5)
        self.inorm = nn.InstanceNorm2D(ch)
        self.body = nn.Conv2D(ch, ch, 3, padding=1)
        self.gnorm = nn.GroupNorm(8, ch)
        self.lnorm = nn.LayerNorm(ch)
        self.theta = nn.Linear(ch, 6)
        self.up = nn.Conv2D(ch, 3 * 4, 3, padding=1)

    def forward(self, x):
        h = F.relu(self.inorm(self.head(self.pad(x))))
        h = h + F.silu(self.gnorm(self.body(h)))
        h = F.gelu(self.lnorm(h.transpose([0, 2, 3, 1]))).transpose([0, 3, 1, 2])
        # a small learned warp around the identity
        base = paddle.to_tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]).unsqueeze(0)
        theta = base + 0.05 * paddle.tanh(self.theta(h.mean(axis=[2, 3]))).reshape([-1, 2, 3])
        # F.affine_grid spelled out: paddle2onnx 2.1 has no affine_grid mapping (it aborts the conversion)
        hh, ww = h.shape[2], h.shape[3]
        ys, xs = paddle.meshgrid(paddle.linspace(-1 + 1 / hh, 1 - 1 / hh, hh),
                                 paddle.linspace(-1 + 1 / ww, 1 - 1 / ww, ww))
        base_grid = paddle.stack([xs, ys, paddle.ones_like(xs)], axis=-1).reshape([1, hh * ww, 3])
        grid = paddle.matmul(base_grid, theta.transpose([0, 2, 1])).reshape([-1, hh, ww, 2])
        h = F.grid_sample(h, grid, mode="bilinear", padding_mode="border", align_corners=False)
        sr = F.pixel_shuffle(self.up(h), 2)
        return sr + F.interpolate(x, scale_factor=2, mode="bicubic", align_corners=False)


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
    "paddle_pplcnet_x0_5": (lambda: kaiming_init(PPLCNet(0.5, num_classes=1000)),
                            "PP-LCNet x0.5 (PaddleClas; depthwise 3x3/5x5, hardswish, SE with hardsigmoid, "
                            "1x1-conv head)", "classification", [None, 3, 224, 224], DEFAULT, [1, 3, 224, 224],
                            (-2.0, 2.5)),
    "paddle_picodet_like_op11": (PicoDetLike, "PicoDet-S style detector (LCNet x0.75, lite PAN, GFL head, "
                                 "distribution-focal integral, anchor-point decoding, multiclass_nms3)",
                                 "detection", [1, 3, 320, 320], 11, [1, 3, 320, 320], (-2.0, 2.5)),
    "paddle_ppyolo_tiny_like_op11": (PPYOLOTinyLike, "PP-YOLO-Tiny style detector (LCNet x0.5, depthwise head, "
                                     "yolo_box decoding, multiclass_nms3)", "detection", [1, 3, 320, 320], 11,
                                     [1, 3, 320, 320], (-2.0, 2.5)),
    "paddle_sr_ops": (lambda: kaiming_init(SRNetOps()), "restoration net: reflect pad, InstanceNorm, GroupNorm, "
                      "LayerNorm+GELU, affine warp + grid_sample, pixel_shuffle, bicubic interpolate",
                      "image-to-image", [1, 3, 64, 64], DEFAULT, [1, 3, 64, 64], (-1.0, 1.0)),
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
