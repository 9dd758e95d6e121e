"""Swin Transformer in production: the PyTorch model, a verified ONNX export, and a server for
it."""


def __getattr__(name: str) -> str:
    # ``__version__`` on first use: importing this package stays instant, which the server needs
    # (it ignores SIGHUP from its first line, and that line runs after this module).
    if name != "__version__":
        raise AttributeError(name)
    from importlib import metadata

    try:
        return metadata.version("swin-serve")  # pyproject.toml's, which CHANGELOG.md follows
    except metadata.PackageNotFoundError:  # run from a checkout that was never installed
        return "0+unknown"
