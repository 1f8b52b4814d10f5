"""Whole-model ONNX export: wrappers that turn mmdet / mmseg models into ``forward(images) -> tensors`` graphs
with standard ONNX ops only, the exporter, and the ONNX Runtime check against the PyTorch model's ``predict``.

Importing this package needs torch (and mmdet / mmseg for the wrappers); the torch-free runtime lives in
``mmdavit.deploy.runtime`` and imports only numpy, onnxruntime and an image library.
"""
