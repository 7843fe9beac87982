"""Load and run compiled artifacts with the TVM runtime alone.

This module is all a serving image needs: it imports numpy and ``tvm.runtime`` (the VM comes
from ``tvm.runtime.vm``, not ``tvm.relax``), never onnx, onnx-ir, onnxscript or TVM's compiler,
so it works where lepton-opt is installed with ``--no-deps`` next to ``apache-tvm``,
``apache-tvm-ffi``, ``numpy`` and ``ml_dtypes``, also with ``TVM_USE_RUNTIME_LIB=1`` (TVM's
runtime library only)::

    from lepton_opt.runtime import load_compiled
    model = load_compiled("model.lepton")
    outputs = model.run({"image": image})

An artifact whose manifest lists onnxruntime segments (nodes that did not lower) also needs
onnxruntime. Threads: TVM's pool uses every core the process may use; set ``TVM_NUM_THREADS``
before the first run to use fewer (as with a full install).
"""

from __future__ import annotations

from lepton_opt.targets.artifact import CompiledModel, PartitionedModel, load_compiled

__all__ = ["CompiledModel", "PartitionedModel", "load_compiled"]
