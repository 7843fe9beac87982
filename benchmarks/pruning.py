"""Pruning, measured: speed of channel pruning, accuracy of sensitivity-guided pruning, 2:4.

    python benchmarks/pruning.py [--threads 2] [--duration 30] [--json out.json]

1. ResNet-50 (the suite's export) with 30% of the channels of every prunable group removed
   (counts rounded to multiples of 8): ``lepton_opt.benchmark`` with variants ort, fp32, pruned
   and ort-pruned in one interleaved run; speed-ups of the pruned model over the unpruned one on
   each engine, paired by round. The same with 80% magnitude pruning, to show what unstructured
   zeros buy dense kernels.
2. The digits CNN (trained here on scikit-learn's digits): for channel and magnitude pruning,
   a sensitivity scan on the validation split picks the highest sparsity whose top-1
   accuracy stays within 2 points of the unpruned model; test-set accuracy of the result is
   then measured with onnxruntime and with lepton-opt's build.
3. 2:4 on ResNet-50: every eligible weight is checked for 2 zeros in each group of 4 along
   its reduction axis.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx

HERE = Path(__file__).resolve().parent


def _parse(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of interleaved timing")
    parser.add_argument("--model-dir", type=Path, default=HERE / "results" / "models")
    parser.add_argument("--budget", type=float, default=2.0, help="top-1 accuracy points the digits CNN may lose")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    return parser.parse_args(argv)


def resnet_speed(path: Path, threads: int, duration: float, method: str = "channel", sparsity: float = 0.3) -> dict:
    import lepton_opt
    from lepton_opt.bench.variants import PruneOptions

    result = lepton_opt.benchmark(path, variants="fp32,pruned,ort-pruned", threads=threads, duration=duration,
                                  prune=PruneOptions(method, sparsity), progress=True, memory=False)
    pruned = lepton_opt.prune(path, method, sparsity)
    row = {
        "groups_pruned": len(pruned.layers), "groups_left_alone": len(pruned.skipped),
        "channels_removed": pruned.achieved, "params_before": pruned.params_before,
        "params_after": pruned.params_after,
        "lepton_pruned_over_unpruned": result.speedup("pruned", baseline="fp32"),
        "ort_pruned_over_unpruned": result.speedup("ort-pruned", baseline="ort"),
        "p50_ms": {v.name: v.latency[1].p50 for v in result.variants if v.ok},
        "cosine_vs_unpruned": {v.name: v.accuracy.cosine for v in result.variants if v.ok and v.accuracy},
        "rounds": result.rounds[1], "block": result.block[1],
    }
    print(f"resnet50, {method} {sparsity:.0%} ({row['channels_removed']:.1%} achieved in {row['groups_pruned']} "
          f"layers or groups; {row['params_before']:,} -> {row['params_after']:,} parameters, "
          f"{pruned.nonzero_after:,} non-zero): pruned / unpruned speed-up "
          f"lepton-opt {row['lepton_pruned_over_unpruned']:.2f}x, onnxruntime {row['ort_pruned_over_unpruned']:.2f}x "
          f"(same interleaved run, p50 {row['p50_ms']})", flush=True)
    return row


def digits_scan(model_dir: Path, budget: float, threads: int) -> list[dict]:
    import digits

    import lepton_opt
    from lepton_opt.evaluation.accuracy import ort_session, task_accuracy

    art = digits.train_and_export(model_dir)
    x_test, y_test = np.load(art.data)["input"], np.load(art.labels)
    x_val, y_val = np.load(art.val_data)["input"], np.load(art.val_labels)
    base_session = ort_session(str(art.model))
    base_test = 100 * task_accuracy(base_session.run(None, {"input": x_test})[0], y_test)
    rows = []
    for method in ("channel", "magnitude"):
        result = lepton_opt.prune(art.model, method, max_accuracy_drop=budget, data={"input": x_val}, labels=y_val)
        session = ort_session(result.model)
        test_ort = 100 * task_accuracy(session.run(None, {"input": x_test})[0], y_test)
        compiled = lepton_opt.compile(result.model, input_shapes={"input": list(x_test.shape)})
        test_lepton = 100 * task_accuracy(compiled.run({"input": x_test})["logits"], y_test)
        row = {"method": method, "sparsity": result.achieved, "per_layer": result.scan.ratios,
               "val_drop_points": result.scan.achieved, "test_accuracy_unpruned": base_test,
               "test_accuracy_pruned_ort": test_ort, "test_accuracy_pruned_lepton": test_lepton,
               "params_before": result.params_before, "params_after": result.params_after,
               "nonzero_after": result.nonzero_after, "evaluations": result.scan.evaluations}
        rows.append(row)
        print(f"digits_cnn, {method}: sparsity {result.achieved:.1%} chosen by the scan (validation drop "
              f"{result.scan.achieved:.2f} points, budget {budget}); test accuracy {base_test:.2f}% -> "
              f"{test_ort:.2f}% (onnxruntime), {test_lepton:.2f}% (lepton-opt build)", flush=True)
    return rows


def two_four(path: Path) -> dict:
    import lepton_opt
    from lepton_opt.passes.prune import check_two_four

    result = lepton_opt.prune(path, "2:4")
    violations = check_two_four(result.model)
    with tempfile.TemporaryDirectory() as tmp:
        onnx.save(result.model, Path(tmp) / "m.onnx")
        onnx.checker.check_model(str(Path(tmp) / "m.onnx"))
    row = {"weights": len(violations), "groups_violating": sum(violations.values()), "skipped": result.skipped,
           "compressed_before": result.compressed_before, "compressed_after": result.compressed_after}
    print(f"resnet50, 2:4: {row['weights']} weights, {row['groups_violating']} groups of 4 with fewer than 2 zeros; "
          f"skipped {len(result.skipped)} ({'; '.join(f'{n}: {w}' for n, w in result.skipped)}); compressed size "
          f"{row['compressed_before'] / 2**20:.1f} -> {row['compressed_after'] / 2**20:.1f} MiB", flush=True)
    return row


def main(argv=None) -> int:
    args = _parse(argv)
    sys.path.insert(0, str(HERE))
    import models as bench_models

    from lepton_opt.evaluation.latency import set_runtime_threads

    set_runtime_threads(args.threads)
    resnet = args.model_dir / "resnet50.onnx"
    if not resnet.exists():
        bench_models.export("resnet50", resnet)
    figures = {"resnet50_channel_30": resnet_speed(resnet, args.threads, args.duration),
               "resnet50_magnitude_80": resnet_speed(resnet, args.threads, args.duration, "magnitude", 0.8),
               "digits_scan": digits_scan(args.model_dir, args.budget, args.threads),
               "resnet50_2_4": two_four(resnet)}
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
