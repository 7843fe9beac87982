"""Running models side by side with onnxruntime: accuracy now, latency and reports later."""
