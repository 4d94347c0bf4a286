"""ONNX export of the truncated VGG19 feature stack and ONNX Runtime parity checks (issue 4)."""
