"""Loading ONNX models into the IR (onnx-ir) and the helpers around it."""

from lepton_opt.ir.load import LoadedModel, load_model, parse_input_shape

__all__ = ["LoadedModel", "load_model", "parse_input_shape"]
