"""Graph passes over the IR. Every pass keeps ONNX semantics, so onnxruntime can run the model
before and after it.

The registered passes (:mod:`registry`) keep the model's outputs within float32 rounding. The
transformations that trade accuracy live beside them and are run on request, each with a
budget checked on calibration inputs (:mod:`calibration`): pruning (:mod:`prune`) and mixed
precision (:mod:`precision`)."""
