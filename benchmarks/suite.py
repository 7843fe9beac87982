"""The benchmark suite: every variant of every suite model against onnxruntime, in one report.

    make bench                       # installs the bench extra and torch (CPU), then runs this
    python benchmarks/suite.py [--models resnet50,digits_cnn] [--variants ort,fp32] [--threads 2]
        [--duration 30] [--out benchmarks/results/suite] [--no-readme] [--fresh]

Models: ResNet-50, MobileNetV2, a BERT-base-style encoder (seq 128), a ViT-small-style model and
a YOLO-style detector, exported from the reference PyTorch definitions in ``models.py`` (random
weights: latency does not depend on them), plus ``digits_cnn``, a small CNN trained here on
scikit-learn's bundled digits (``digits.py``), whose test-set accuracy is reported per variant.

Each model goes through :func:`lepton_opt.benchmark` (variants built once, timed interleaved,
accuracy against onnxruntime fp32). The report (``report.md``, ``report.html`` with plots,
``report.json``) is written to ``--out``, and the summary table between the suite markers in
``benchmarks/README.md`` is replaced, with the machine and date.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SUITE = ("resnet50", "mobilenet_v2", "bert_base", "vit_small", "yolo_style", "digits_cnn")
VARIANTS = "ort,ort-opt,fp32,fp32-O0,pruned,ort-pruned,fp16,bf16,ort-fp16,int8,ort-int8"
README = HERE / "README.md"
BEGIN, END = "<!-- suite:begin -->", "<!-- suite:end -->"
PRECISION_BEGIN, PRECISION_END = "<!-- precision:begin -->", "<!-- precision:end -->"
INT8_BEGIN, INT8_END = "<!-- int8:begin -->", "<!-- int8:end -->"
ACCURACY_SAMPLES = 4
CALIBRATION_SAMPLES = 16  # int8 calibration inputs, seeded apart from the accuracy inputs


def _parse(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(SUITE), help=f"comma-separated subset of {', '.join(SUITE)}")
    parser.add_argument("--variants", default=VARIANTS, help="variants per model (see lepton-opt bench --help)")
    parser.add_argument("--threads", type=int, default=2, help="threads per engine")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of interleaved timing per model")
    parser.add_argument("--model-dir", type=Path, default=HERE / "results" / "models", help="exported models cache")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "suite", help="report directory")
    parser.add_argument("--no-readme", action="store_true", help="do not update benchmarks/README.md")
    parser.add_argument("--fresh", action="store_true", help="re-export and retrain even if cached")
    return parser.parse_args(argv)


def _prepare(name: str, model_dir: Path, fresh: bool) -> dict:
    """The model file and the benchmark options (accuracy data, batch sweep) for ``name``."""
    if name == "digits_cnn":
        import digits

        path = model_dir / "digits_cnn.onnx"
        if fresh or not path.exists():
            digits.train_and_export(model_dir)
        return {"model": path, "data": model_dir / "digits_test.npz", "labels": model_dir / "digits_test_labels.npy",
                "calibration": model_dir / "digits_val.npz", "batches": [1, 64]}
    import models as bench_models

    path = model_dir / f"{name}.onnx"
    if fresh or not path.exists():
        print(f"[{name}] exporting to {path} ...", flush=True)
        bench_models.export(name, path)
    # Realistic inputs (token ids over the vocabulary, padding masks), one sample per seed.
    spec = bench_models.MODELS[name]

    def inputs(seeds):
        samples = [bench_models.example_inputs(name, 1, seed=s) for s in seeds]
        return {n: np.concatenate([s[i].numpy() for s in samples]) for i, n in enumerate(spec.input_names)}

    return {"model": path, "data": inputs(range(ACCURACY_SAMPLES)),
            "calibration": inputs(range(1000, 1000 + CALIBRATION_SAMPLES))}


def readme_table(results) -> str:
    from lepton_opt.bench.report import SUITE_COLUMNS, machine_line, suite_rows

    r0 = results[0]
    lines = [BEGIN, "",
             f"Measured {r0.date[:10]} on {machine_line(results)}; {r0.threads} threads per engine, "
             "untuned lepton-opt builds. Regenerate with `make bench` (full report in "
             "`benchmarks/results/suite/report.html`).", "",
             "| " + " | ".join(SUITE_COLUMNS) + " |", "|" + "---|" * len(SUITE_COLUMNS)]
    lines += ["| " + " | ".join(row) + " |" for row in suite_rows(results)]
    unavailable = sorted({f"{v.name} ({v.reason})" for r in results for v in r.variants if v.status == "unavailable"})
    failed = [f"{r.name}/{v.name}: {v.reason}" for r in results for v in r.failed]
    if unavailable:
        lines += ["", "Not measured, reported as unavailable: " + "; ".join(unavailable) + "."]
    if failed:
        lines += ["", "Failed: " + "; ".join(failed) + "."]
    return "\n".join(lines + ["", END])


def _measured(result, names) -> bool:
    ok = {v.name for v in result.variants if v.ok}
    return set(names) <= ok


def _ratio(r, name: str, base: str) -> str:
    """How many times faster ``name`` ran than ``base``, paired by round, or a dash."""
    value = r.speedup(name, baseline=base) if _measured(r, {name, base}) else None
    return "–" if value is None else f"{value:.2f}x"


def _accuracy(r, name: str, what: str) -> str:
    """One accuracy figure of a variant (cosine, task accuracy), or a dash."""
    acc = r.variant(name).accuracy if _measured(r, {name}) else None
    value = getattr(acc, what, None) if acc else None
    if value is None:
        return "–"
    return f"{100 * value:.1f}%" if what == "task_accuracy" else f"{value:.6f}"


def precision_table(results) -> str | None:
    """Mixed precision against the fp32 build, paired in the same interleaved run, with accuracy."""
    rows = [[r.name, _ratio(r, "fp16", "fp32"), _ratio(r, "bf16", "fp32"), _ratio(r, "ort-fp16", "ort"),
             _accuracy(r, "fp16", "cosine"), _accuracy(r, "bf16", "cosine"), _accuracy(r, "ort-fp16", "cosine"),
             _accuracy(r, "fp32", "task_accuracy"), _accuracy(r, "fp16", "task_accuracy"),
             _accuracy(r, "bf16", "task_accuracy")] for r in results]
    if not any(_measured(r, {"fp16"}) or _measured(r, {"bf16"}) for r in results):
        return None
    columns = ["model", "fp16 vs fp32 build", "bf16 vs fp32 build", "ort-fp16 vs ort", "fp16 cosine",
               "bf16 cosine", "ort-fp16 cosine", "fp32 task acc", "fp16 task acc", "bf16 task acc"]
    lines = [PRECISION_BEGIN, "", "Speed ratios above 1: the mixed-precision variant ran faster, paired by round in "
             "the suite run above. Cosine: against onnxruntime fp32 outputs on the suite's accuracy inputs.", "",
             "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines + ["", PRECISION_END])


def int8_table(results) -> str | None:
    """The int8 variants against onnxruntime fp32 and the fp32 build, paired in the same run."""
    if not any(_measured(r, {"int8"}) for r in results):
        return None
    rows = [[r.name, _ratio(r, "int8", "ort"), _ratio(r, "int8", "fp32"), _ratio(r, "ort-int8", "ort"),
             _ratio(r, "int8", "ort-int8"), _accuracy(r, "int8", "cosine"), _accuracy(r, "ort-int8", "cosine"),
             _accuracy(r, "fp32", "task_accuracy"), _accuracy(r, "int8", "task_accuracy")] for r in results]
    columns = ["model", "int8 vs ort fp32", "int8 vs fp32 build", "ort-int8 vs ort fp32", "int8 vs ort-int8",
               "int8 cosine", "ort-int8 cosine", "fp32 task acc", "int8 task acc"]
    lines = [INT8_BEGIN, "", "Speed ratios above 1: the first variant ran faster, paired by round in the suite run "
             "above. int8 = static QDQ quantization (per-channel int8 weights, uint8 activations, minmax), "
             f"calibrated on {CALIBRATION_SAMPLES} inputs seeded apart from the accuracy inputs (digits: the "
             "validation split). Cosine: against onnxruntime fp32 outputs.", "",
             "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines + ["", INT8_END])


def _replace(text: str, begin: str, end: str, block: str, heading: str) -> str:
    if begin in text and end in text:
        return re.sub(re.escape(begin) + ".*?" + re.escape(end), lambda _: block, text, flags=re.S)
    return text.rstrip() + f"\n\n## {heading}\n\n" + block + "\n"


def update_readme(results, path: Path = README) -> None:
    text = _replace(path.read_text(), BEGIN, END, readme_table(results), "Suite")
    precision = precision_table(results)
    if precision:
        text = _replace(text, PRECISION_BEGIN, PRECISION_END, precision, "Mixed precision (fp16, bf16)")
    int8 = int8_table(results)
    if int8:
        text = _replace(text, INT8_BEGIN, INT8_END, int8, "Int8")
    path.write_text(text)


def main(argv=None) -> int:
    args = _parse(argv)
    sys.path.insert(0, str(HERE))
    # The suite measures lepton-opt's default schedules: builds read an empty record cache, not
    # the user's (benchmarks/tuning.py measures tuned builds).
    os.environ["LEPTON_OPT_CACHE"] = tempfile.mkdtemp(prefix="lepton-opt-suite-cache-")
    import lepton_opt
    from lepton_opt.bench.report import markdown, write_reports

    names = [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = [n for n in names if n not in SUITE]
    if unknown:
        print(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(SUITE)}", file=sys.stderr)
        return 2
    results = []
    for name in names:
        start = time.perf_counter()
        options = _prepare(name, args.model_dir, args.fresh)
        print(f"[{name}] benchmarking {args.variants} ...", flush=True)
        result = lepton_opt.benchmark(options.pop("model"), "llvm", variants=args.variants, threads=args.threads,
                                      duration=args.duration, progress=True, **options)
        results.append(result)
        print(f"[{name}] done in {time.perf_counter() - start:.0f} s: " + ", ".join(
            f"{v.name} {result.speedup(v.name):.2f}x" for v in result.variants
            if v.ok and v.name != "ort" and result.speedup(v.name) is not None), flush=True)
    paths = write_reports(results, args.out)
    print(markdown(results))
    print(f"\nreport: {paths['html']}")
    if not args.no_readme:
        update_readme(results)
        print(f"updated the suite table in {README}")
    return 1 if any(r.failed for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
