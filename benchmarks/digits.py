"""The real-accuracy case: a small CNN trained on scikit-learn's bundled digits dataset.

scikit-learn ships the UCI handwritten digits (1797 8x8 grey images, 10 classes) inside the
package, so this needs no download. The CNN is trained at benchmark time (seeded, CPU, a few
seconds) on 1144 of the images, exported with the TorchScript exporter with a dynamic batch
axis. Two held-out splits are saved beside it: a validation split (203 images) for calibration
and sensitivity scans, and the test split (450 images) that every reported accuracy is
measured on, so choices made on the validation split do not leak into the figures.

    python benchmarks/digits.py --out benchmarks/results/models   # digits_cnn.onnx + test data
"""

from __future__ import annotations

import argparse
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SEED = 0
EPOCHS = 40
BATCH = 64


@dataclass
class DigitsArtifacts:
    model: Path
    data: Path  # test split: .npz with "input": [N, 1, 8, 8] float32
    labels: Path  # .npy with N int64 labels
    val_data: Path  # validation split, same format
    val_labels: Path
    torch_test_accuracy: float
    seconds: float


def load_split() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Train/validation/test splits (1144/203/450, stratified, seeded) of the digits images,
    scaled to [0, 1]."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None]  # [N, 1, 8, 8]
    y = digits.target.astype(np.int64)
    x_rest, x_test, y_rest, y_test = train_test_split(x, y, test_size=0.25, random_state=SEED, stratify=y)
    x_train, x_val, y_train, y_val = train_test_split(x_rest, y_rest, test_size=0.15, random_state=SEED,
                                                      stratify=y_rest)
    return {"train": (x_train, y_train), "val": (x_val, y_val), "test": (x_test, y_test)}


def build_model():
    import torch.nn as nn

    def block(c_in, c_out):
        return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]

    return nn.Sequential(
        *block(1, 16), *block(16, 32), nn.MaxPool2d(2),  # 8x8 -> 4x4
        *block(32, 64), nn.MaxPool2d(2),  # 4x4 -> 2x2
        nn.Flatten(), nn.Linear(64 * 2 * 2, 64), nn.ReLU(), nn.Dropout(0.2), nn.Linear(64, 10),
    )


def train_and_export(out_dir: Path, *, epochs: int = EPOCHS, verbose: bool = True) -> DigitsArtifacts:
    import torch

    start = time.perf_counter()
    torch.manual_seed(SEED)
    splits = load_split()
    (x_train, y_train), (x_test, y_test) = splits["train"], splits["test"]
    model = build_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs)
    xt, yt = torch.from_numpy(x_train), torch.from_numpy(y_train)
    gen = torch.Generator().manual_seed(SEED)
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(xt), generator=gen)
        for i in range(0, len(xt), BATCH):
            idx = order[i:i + BATCH]
            loss = torch.nn.functional.cross_entropy(model(xt[idx]), yt[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        scheduler.step()
    model.eval()
    with torch.no_grad():
        accuracy = float((model(torch.from_numpy(x_test)).argmax(1).numpy() == y_test).mean())
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "digits_cnn.onnx"
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(model, (torch.from_numpy(x_test[:1]),), str(path), input_names=["input"],
                          output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                          opset_version=17, dynamo=False)
    paths = {}
    for split in ("val", "test"):
        x, y = splits[split]
        paths[split] = (out_dir / f"digits_{split}.npz", out_dir / f"digits_{split}_labels.npy")
        np.savez(paths[split][0], input=x)
        np.save(paths[split][1], y)
    seconds = time.perf_counter() - start
    if verbose:
        print(f"digits_cnn: trained {epochs} epochs on {len(x_train)} images in {seconds:.1f} s; torch test "
              f"accuracy {100 * accuracy:.2f}% on {len(x_test)} images -> {path}", flush=True)
    return DigitsArtifacts(path, *paths["test"], *paths["val"], accuracy, seconds)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "models")
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    args = parser.parse_args(argv)
    train_and_export(args.out, epochs=args.epochs)


if __name__ == "__main__":
    main()
