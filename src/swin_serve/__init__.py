"""Swin Transformer in production: the PyTorch model, a verified ONNX export, and a server for
it."""
