"""Spatial-SAM: networks, dual-track training and ONNX export."""
