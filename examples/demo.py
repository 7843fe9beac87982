"""The quick-start demo: compile the bundled example for this CPU, run it, compare with onnxruntime.

    python examples/demo.py [MODEL.onnx] [--threads 2]

Prints the agreement of every output with onnxruntime (max abs error, cosine) and the latency
of both engines measured in the same run. Exit code 1 if the outputs disagree.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", default=str(HERE / "mobilenet_tiny.onnx"))
    parser.add_argument("--threads", type=int, default=2, help="threads for each engine")
    args = parser.parse_args(argv)

    from lepton_opt.bench.latency import compare_latency, set_runtime_threads

    set_runtime_threads(args.threads)
    import lepton_opt
    from lepton_opt.bench.accuracy import random_feeds

    start = time.perf_counter()
    compiled = lepton_opt.compile(args.model, target="llvm")
    print(f"compiled {Path(args.model).name} for {compiled.target.get('mcpu', 'llvm')} "
          f"in {time.perf_counter() - start:.1f} s")
    with tempfile.TemporaryDirectory() as tmp:
        # The round trip a deployment takes: save the artifact, load it back, run that.
        compiled = lepton_opt.load_compiled(compiled.save(Path(tmp) / "model.lepton"))
        feeds = random_feeds(compiled.inputs, seed=0)
        outputs = compiled.run(feeds)
        for name, value in outputs.items():
            print(f"output {name}: shape {list(value.shape)}, first values {value.reshape(-1)[:4]}")
        report = lepton_opt.verify(compiled, args.model, feeds=feeds)
        print("agreement with onnxruntime:")
        for line in report.lines():
            print(f"  {line}")
        timing = compare_latency(compiled, Path(args.model).read_bytes(), feeds, threads=args.threads)
        print(timing.line())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
