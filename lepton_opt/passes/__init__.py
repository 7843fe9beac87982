"""Graph passes over the IR. Every pass keeps ONNX semantics, so onnxruntime can run the model
before and after it."""
