"""Precision ONNX files: FP16 conversion, INT8 calibration (methods, caches) and Q/DQ recipes, the TensorRT lint."""
