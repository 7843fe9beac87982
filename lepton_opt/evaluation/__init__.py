"""Running and comparing models, at the bottom of the package (it imports nothing of lepton-opt
but the errors and the model loader): onnxruntime sessions and seeded inputs, output comparison
and accuracy statistics (``accuracy``), input specs and datasets in batches (``data``), and
interleaved timing (``latency``). The passes' guards, ``verify``, ``debug``, ``auto`` and the
benchmark runner all build on it."""
