#!/usr/bin/env python3
"""Zoo producer "tf2onnx": Keras models (TensorFlow 2.15, Keras 2) converted with tf2onnx.

Models are built in code with random weights (``tf.keras.utils.set_random_seed(0)``, ``weights=None``:
nothing downloaded): ``tf.keras.applications`` classifiers plus small hand-written Keras models (strided
'same'-padded convolutions, a Conv1D + LSTM/GRU sequence model, a transformer encoder). They are converted
the way Keras users do it: ``tf2onnx.convert.from_keras(model, input_signature=..., opset=N)`` with NHWC
inputs as Keras has them (hence Transpose-heavy graphs) and the batch dim left as None (dynamic; tf2onnx
names it ``unk__N``). Opsets vary from 13 to 17 across the models.

tf2onnx 1.17 is tested against TF 2.13-2.15; from TF 2.16 on (Keras 3) ``from_keras`` breaks
(onnx/tensorflow-onnx#2348), hence tensorflow-cpu 2.15.

Usage (inside the venv from requirements-tf.txt):
    python benchmarks/zoo/export_tf.py --out DIR [--only a,b] [--list] [--force]
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TF's C++ INFO/WARNING chatter
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import tensorflow as tf  # noqa: E402

from _exporter_cli import dims_note, run  # noqa: E402

L = tf.keras.layers
apps = tf.keras.applications


def liven(build):
    """Seeded stand-ins for trained BatchNormalization statistics (gamma, beta, moving mean / variance) for a
    ``build()``-er. Fresh Keras BN layers are the identity, and through Xception / EfficientNetV2 / DeepLab their
    softmax comes out uniform to 1e-8 (std 2e-8 around 0.001): a cosine against onnxruntime is then 1.0 for any
    near-uniform answer, right or wrong. With these the outputs spread (cosine with their own mean 0.98-0.99)."""
    import numpy as np

    def built():
        model = build()
        rng = np.random.default_rng(0)
        ranges = {"gamma": (0.5, 1.5), "beta": (-0.2, 0.2), "moving_mean": (-0.2, 0.2), "moving_variance": (0.5, 2.0)}
        for layer in model.layers:
            if isinstance(layer, L.BatchNormalization):
                for w in layer.weights:
                    low, high = ranges[w.name.split("/")[-1].split(":")[0]]
                    w.assign(rng.uniform(low, high, w.shape).astype(w.dtype.as_numpy_dtype))
        return model

    built.livened = True
    return built


def strided_cnn():
    """A small CNN of 'same'-padded stride-2 convolutions on an odd-sized input: TF's SAME padding is
    asymmetric (extra pixel at the end), which tf2onnx must express as explicit pads."""
    x = inp = L.Input((65, 65, 3))
    for filters, k in ((16, 3), (32, 5), (48, 3), (64, 3)):
        x = L.Conv2D(filters, k, strides=2, padding="same", use_bias=False)(x)
        x = L.BatchNormalization()(x)
        x = L.ReLU(6.0)(x)
        x = L.DepthwiseConv2D(3, padding="same")(x)
        x = L.Activation("swish")(x)
    x = L.MaxPooling2D(2, padding="same")(x)
    x = L.GlobalAveragePooling2D()(x)
    out = L.Dense(10, activation="softmax")(x)
    return tf.keras.Model(inp, out, name="strided_cnn")


def conv1d_rnn():
    """Keyword-spotting style sequence model: Conv1D front end, bidirectional LSTM, GRU, per-step and
    pooled outputs. The time axis is dynamic as well as the batch."""
    x = inp = L.Input((None, 40), name="features")
    x = L.Conv1D(64, 5, padding="same", activation="relu")(x)
    x = L.Conv1D(64, 3, strides=2, padding="same", activation="relu")(x)
    x = L.Bidirectional(L.LSTM(48, return_sequences=True))(x)
    x = L.GRU(48, return_sequences=True)(x)
    x = L.Dropout(0.1)(x)
    logits = L.Dense(12)(L.GlobalMaxPooling1D()(x))
    return tf.keras.Model(inp, L.Softmax()(logits), name="conv1d_rnn")


class PositionEmbedding(L.Layer):
    """Learned positional embedding added to token embeddings (as in the Keras text-classification
    transformer example); positions come from tf.range over the dynamic sequence length."""

    def __init__(self, max_len, vocab, dim, **kw):
        super().__init__(**kw)
        self.tok = L.Embedding(vocab, dim)
        self.pos = L.Embedding(max_len, dim)

    def call(self, x):
        positions = tf.range(start=0, limit=tf.shape(x)[-1], delta=1)
        return self.tok(x) + self.pos(positions)


def transformer_encoder(vocab=1000, dim=64, heads=4, ff=128, layers=2, max_len=128):
    x_in = L.Input((None,), dtype="int32", name="input_ids")
    x = PositionEmbedding(max_len, vocab, dim)(x_in)
    for _ in range(layers):
        a = L.MultiHeadAttention(num_heads=heads, key_dim=dim // heads)(x, x)
        x = L.LayerNormalization(epsilon=1e-6)(x + a)
        f = L.Dense(ff, activation="gelu")(x)
        f = L.Dense(dim)(f)
        x = L.LayerNormalization(epsilon=1e-6)(x + f)
    x = L.GlobalAveragePooling1D()(x)
    out = L.Dense(2, activation="softmax")(x)
    return tf.keras.Model(x_in, out, name="transformer_encoder")


def deeplabv3plus(size=128, classes=6):
    """DeepLabV3+ as in the Keras semantic-segmentation example, on a small hand-built backbone: atrous
    (dilated) convolutions and an ASPP with rates 6/12/18 (tf2onnx must fold TF's SpaceToBatchND /
    BatchToSpaceND dilation pattern back into Conv dilations), image pooling upsampled with tf.image.resize
    (bilinear), a Conv2DTranspose x2 and a bilinear UpSampling2D in the decoder, softmax over classes."""
    def cbr(x, filters, k=3, s=1, d=1, sep=False):
        conv = L.SeparableConv2D if sep else L.Conv2D
        x = conv(filters, k, strides=s, dilation_rate=d, padding="same", use_bias=False)(x)
        return L.ReLU()(L.BatchNormalization()(x))

    inp = L.Input((size, size, 3))
    x = cbr(inp, 24, s=2)
    low = cbr(cbr(x, 32, s=2), 32)                  # 1/4
    x = cbr(cbr(low, 64, s=2), 64, sep=True)         # 1/8
    x = cbr(x, 96, d=2, sep=True)                    # atrous backbone tail, output stride 8
    pool = L.GlobalAveragePooling2D(keepdims=True)(x)
    pool = cbr(pool, 64, k=1)
    pool = L.Lambda(lambda t: tf.image.resize(t[0], tf.shape(t[1])[1:3], method="bilinear"))([pool, x])
    branches = [cbr(x, 64, k=1)] + [cbr(x, 64, d=r, sep=True) for r in (6, 12, 18)] + [pool]
    x = cbr(L.Concatenate()(branches), 64, k=1)
    x = L.Conv2DTranspose(64, 3, strides=2, padding="same")(x)  # 1/8 -> 1/4
    x = cbr(L.Concatenate()([x, cbr(low, 24, k=1)]), 64, sep=True)
    x = L.UpSampling2D(4, interpolation="bilinear")(x)
    out = L.Softmax()(L.Conv2D(classes, 1)(x))
    return tf.keras.Model(inp, out, name="deeplabv3plus")


def _f32(shape, low, high):
    return {"shape": shape, "dtype": "float32", "low": low, "high": high}


# keras.applications models include their own preprocessing (Rescaling / Normalization) or expect
# mode-specific input: raw 0..255 pixels suit EfficientNet; MobileNetV2 / ResNet50 / DenseNet121 are fed
# the already-preprocessed range their preprocess_input produces.
MODELS = {
    # name -> (builder, architecture, task, opset, keras input name -> (TensorSpec shape, dtype), inputs)
    "tf_mobilenetv2_a035": (lambda: apps.MobileNetV2(input_shape=(224, 224, 3), alpha=0.35, weights=None),
                            "keras.applications MobileNetV2 alpha=0.35", "classification", 13,
                            _f32([1, 224, 224, 3], -1.0, 1.0)),
    "tf_efficientnetb0": (lambda: apps.EfficientNetB0(input_shape=(224, 224, 3), weights=None),
                          "keras.applications EfficientNetB0", "classification", 15,
                          _f32([1, 224, 224, 3], 0.0, 255.0)),
    "tf_resnet50_128": (lambda: apps.ResNet50(input_shape=(128, 128, 3), weights=None),
                        "keras.applications ResNet50 (128x128 input)", "classification", 17,
                        _f32([1, 128, 128, 3], -120.0, 150.0)),
    "tf_densenet121_96": (lambda: apps.DenseNet121(input_shape=(96, 96, 3), weights=None),
                          "keras.applications DenseNet121 (96x96 input)", "classification", 14,
                          _f32([1, 96, 96, 3], -2.0, 2.5)),
    # more keras.applications families (ops the four above lack), with seeded BatchNormalization statistics
    "tf_xception_128": (liven(lambda: apps.Xception(input_shape=(128, 128, 3), weights=None)),
                        "keras.applications Xception (SeparableConv2D, 128x128 input)", "classification", 13,
                        _f32([1, 128, 128, 3], -1.0, 1.0)),
    "tf_inceptionv3_139": (liven(lambda: apps.InceptionV3(input_shape=(139, 139, 3), weights=None)),
                           "keras.applications InceptionV3 (asymmetric 1x7/7x1 convolutions, 'valid' pooling, "
                           "139x139 input)", "classification", 15, _f32([1, 139, 139, 3], -1.0, 1.0)),
    "tf_nasnetmobile": (liven(lambda: apps.NASNetMobile(input_shape=(224, 224, 3), weights=None)),
                        "keras.applications NASNetMobile (cropping, ZeroPadding, separable convs, avg/max pool "
                        "cells)", "classification", 13, _f32([1, 224, 224, 3], -1.0, 1.0)),
    "tf_efficientnetv2b0": (liven(lambda: apps.EfficientNetV2B0(input_shape=(160, 160, 3), weights=None)),
                            "keras.applications EfficientNetV2B0 (fused MBConv, Rescaling/Normalization "
                            "preprocessing, 160x160 input)", "classification", 17, _f32([1, 160, 160, 3], 0.0, 255.0)),
    # no keras.applications ConvNeXt: its depthwise convolutions are Conv2D(groups=C), which tf2onnx 1.17 leaves
    # as 18 TF 'PartitionedCall' nodes in the ONNX graph ("Unsupported ops"): onnxruntime cannot load the model
    "tf_deeplabv3plus_128": (liven(deeplabv3plus), "Keras DeepLabV3+ (atrous separable convs, ASPP rates 6/12/18, "
                             "image pooling + tf.image.resize, Conv2DTranspose, bilinear UpSampling2D)",
                             "segmentation", 15, _f32([1, 128, 128, 3], -1.0, 1.0)),
    "tf_strided_cnn": (strided_cnn, "Keras CNN: 'same'-padded stride-2 Conv2D/DepthwiseConv2D on 65x65",
                       "classification", 16, _f32([1, 65, 65, 3], 0.0, 1.0)),
    "tf_conv1d_lstm_gru": (conv1d_rnn, "Keras Conv1D + Bidirectional LSTM + GRU sequence classifier",
                           "audio classification", 14, _f32([1, 100, 40], -3.0, 3.0)),
    "tf_transformer_encoder": (transformer_encoder, "Keras transformer encoder (MultiHeadAttention, "
                               "LayerNormalization, learned positions), 2 layers d=64",
                               "text classification", 17,
                               {"shape": [1, 32], "dtype": "int32", "low": 0, "high": 1000}),
}


def export_one(name: str, out: Path, force: bool) -> None:
    import tf2onnx

    build, arch, task, opset, run_input = MODELS[name]
    dst, side = out / f"{name}.onnx", out / f"{name}.json"
    if dst.exists() and side.exists() and not force:
        return
    tf.keras.backend.clear_session()
    tf.keras.utils.set_random_seed(0)
    model = build()
    t0 = time.time()
    # what users write: the Keras input shape with the batch dim left as None
    k_in = model.inputs[0]
    spec = (tf.TensorSpec(k_in.shape, k_in.dtype, name=k_in.name.split(":")[0]),)
    model_proto, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=opset, output_path=str(dst))
    in_name = model_proto.graph.input[0].name
    real_opset = next(o.version for o in model_proto.opset_import if o.domain in ("", "ai.onnx"))
    notes = [f"tf2onnx.convert.from_keras(input_signature=TensorSpec({list(k_in.shape)}), opset={opset})",
             "NHWC input as Keras has it" if len(k_in.shape) == 4 else "",
             "BatchNormalization statistics randomised (seeded), see liven()" if getattr(build, "livened", False)
             else "", dims_note(model_proto),
             f"export took {time.time() - t0:.1f} s"]
    meta = {"name": name, "producer": "tf2onnx",
            "producer_version": f"tensorflow {tf.__version__}, tf2onnx {tf2onnx.__version__}",
            "architecture": arch, "task": task, "opset": real_opset, "inputs": {in_name: run_input},
            "notes": "; ".join(n for n in notes if n)}
    side.write_text(json.dumps(meta, indent=1) + "\n")


def main() -> int:
    return run(__doc__.splitlines()[0], MODELS, export_one)


if __name__ == "__main__":
    sys.exit(main())
