"""lepton-opt: a graph-level ONNX model optimizer and compiler.

Public API::

    import lepton_opt
    cm = lepton_opt.compile("model.onnx", target="llvm", input_shapes={"x": [1, 3, 224, 224]})
    outputs = cm.run({"x": x})          # {output name: np.ndarray}, in graph order
    cm.save("model.lepton")
    cm = lepton_opt.load_compiled("model.lepton")

    result = lepton_opt.optimize("model.onnx", "O2")   # a smaller, standard .onnx
    lepton_opt.save_model(result.model, "model.opt.onnx")   # checked, written whole or not at all

    pruned = lepton_opt.prune("model.onnx", "channel", 0.3)   # also "magnitude", "2:4", budgets
    onnx.save(pruned.model, "model.pruned.onnx")

    q = lepton_opt.quantize("model.onnx", data="calib.npz")   # int8 QDQ (also "dynamic", "weight-only")
    cm = lepton_opt.compile(q.model)     # integer kernels (VNNI on x86 where present)

    lepton_opt.tune("model.onnx", budget="20m")   # tuned CPU kernels, kept in the record cache
    cm = lepton_opt.compile("model.onnx")          # applies the records automatically

    bench = lepton_opt.benchmark("model.onnx", variants="ort,fp32", report_dir="report")
    bench.speedup("fp32")                # onnxruntime median / lepton-opt median, same run

    report = lepton_opt.debug("model.onnx", precision="fp16")   # or passes=, artifact=, compile=True
    report.first_divergent               # the first value beyond tolerance, in graph order (or None)

    best = lepton_opt.auto("model.onnx", data="val.npz", min_cosine=0.999, output_dir="auto/")
    best.chosen.name, best.chosen.replay  # the fastest build within the budget, and how to rebuild it

    kernels = lepton_opt.profile("model.onnx")   # or a compiled model / artifact directory
    kernels.rows[0].why                  # the slowest kernel, and why it takes its time
"""

from __future__ import annotations

__version__ = "0.1.0"

# Attributes are imported on first use (PEP 562): `import lepton_opt` stays cheap, and a
# deployment that only loads and runs artifacts (lepton_opt.load_compiled, lepton_opt.runtime)
# never imports the compiler stack (onnx, onnx-ir, onnxscript, onnxruntime, TVM's compiler).
_API = ("OptimizeResult", "benchmark", "compile", "inspect_model", "load", "optimize", "profile", "prune",
        "quantize", "save_model", "tune", "verify")

__all__ = ["LeptonError", "OptimizeResult", "__version__", "auto", "benchmark", "compile", "debug", "inspect_model", "load",
           "load_compiled", "optimize", "profile", "prune", "quantize", "save_model", "tune", "verify"]


def __getattr__(name: str):
    if name in _API:
        from lepton_opt import api

        value = getattr(api, name)
    elif name == "load_compiled":
        from lepton_opt.runtime import load_compiled as value
    elif name == "debug":
        from lepton_opt.debugging import debug as value
    elif name == "auto":
        from lepton_opt.searching import auto as value
    elif name == "LeptonError":
        from lepton_opt.errors import LeptonError as value
    else:
        raise AttributeError(f"module 'lepton_opt' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
