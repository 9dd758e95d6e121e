"""Swin Transformer in production: the PyTorch model, a verified ONNX export, and a server for
it."""

from importlib import metadata

try:
    __version__ = metadata.version("swin-serve")  # pyproject.toml's, which CHANGELOG.md follows
except metadata.PackageNotFoundError:  # run from a checkout that was never installed
    __version__ = "0+unknown"
