"""ONNX graph work shared by export and precision: the SE-block search and the rewrites applied after export."""
