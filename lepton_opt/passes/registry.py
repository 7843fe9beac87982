"""Every pass by name, and the named pipelines ``O0`` .. ``O3``.

Registration is this one explicit dict, not an import side effect: a pass exists when it is
listed here. Pipelines are plain lists of names; the :class:`PassManager` repeats a pipeline
until a whole round changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from lepton_opt.errors import OptionError
from lepton_opt.passes import contrib, simplify
from lepton_opt.passes.base import Pass
from lepton_opt.passes.fusion import activation, attention, batchnorm, conv, gelu, gemm, layernorm

PASSES: dict[str, Callable[[], Pass]] = {
    cls.name: cls
    for cls in (
        contrib.ExpandContribOps,
        simplify.FoldShapes,
        simplify.FoldConstants,
        simplify.FoldConstantsWithOnnxruntime,
        simplify.LiftConstants,
        simplify.RemoveNoOps,
        simplify.CollapseChains,
        simplify.RemoveDeadNodes,
        simplify.EliminateCommonSubexpressions,
        simplify.DeduplicateInitializers,
        simplify.FoldLargeConstants,
        batchnorm.FoldBatchNorm,
        conv.FuseConv,
        gemm.FuseGemm,
        layernorm.FuseLayerNorm,
        gelu.FuseGelu,
        activation.FuseActivations,
        attention.FuseAttention,
    )
}

SIMPLIFICATION: tuple[str, ...] = (
    "expand-contrib-ops",  # onnxruntime's com.microsoft ops as standard ones, before anything looks at them
    "fold-shapes",  # first: Shape/Size/Reshape targets become constants the folder can use
    "fold-constants",
    "fold-constants-ort",
    "lift-constants",
    "remove-no-ops",
    "collapse-chains",
    "remove-dead-nodes",
    "cse",
    "dedup-initializers",
)

# Fusion passes (lepton_opt/passes/fusion/*.py), in the order they should run; O2 and O3 run
# them between simplification rounds until nothing changes.
FUSIONS: tuple[str, ...] = (
    "fold-batchnorm",
    "fuse-conv",
    "fuse-gemm",
    "fuse-layernorm",
    "fuse-gelu",
    "fuse-activations",
    "fuse-attention",
)

# Rewrites that may make the file larger or are otherwise not always a win.
AGGRESSIVE: tuple[str, ...] = (
    "fold-large-constants",
)

PIPELINES: dict[str, tuple[str, ...]] = {
    "O0": (),
    "O1": SIMPLIFICATION,
    "O2": SIMPLIFICATION + FUSIONS,
    "O3": SIMPLIFICATION + FUSIONS + AGGRESSIVE,
}

DEFAULT_LEVEL = "O2"


def pipeline_names(level: str | None = None, passes: Sequence[str] | str | None = None) -> list[str]:
    """The pass names to run: ``passes`` when given (a list or "a,b"), else ``level``'s pipeline."""
    if passes is not None:
        names = [p.strip() for p in passes.split(",")] if isinstance(passes, str) else [str(p).strip() for p in passes]
        names = [n for n in names if n]
        unknown = [n for n in names if n not in PASSES]
        if unknown:
            raise OptionError(f"unknown pass {unknown[0]!r}; known passes: {', '.join(PASSES)}")
        return names
    level = DEFAULT_LEVEL if level is None else str(level)
    key = level.upper().lstrip("-")
    key = f"O{key}" if key.isdigit() else key
    if key not in PIPELINES:
        raise OptionError(f"unknown optimization level {level!r}; choose one of {', '.join(PIPELINES)}")
    return list(PIPELINES[key])


def build_passes(names: Sequence[str]) -> list[Pass]:
    """Fresh pass objects for ``names`` (already checked by :func:`pipeline_names`)."""
    return [PASSES[name]() for name in names]
