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
             "NHWC input as Keras has it" if len(k_in.shape) == 4 else "", dims_note(model_proto),
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
