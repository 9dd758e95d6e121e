"""Swin Transformer V1 in PyTorch: presets, checkpoint loading, official weights."""

from .checkpoint import CheckpointError, load_checkpoint
from .config import PRESETS, SwinConfig, get_config
from .download import ChecksumError, DownloadError, download_weights, pretrained_url, sha256_file
from .labels import class_labels, imagenet_labels
from .swin import (
    SwinTransformer,
    build_model,
    relative_position_index,
    shifted_window_mask,
    window_partition,
    window_reverse,
)

__all__ = [
    "PRESETS",
    "CheckpointError",
    "ChecksumError",
    "DownloadError",
    "SwinConfig",
    "SwinTransformer",
    "build_model",
    "class_labels",
    "download_weights",
    "get_config",
    "imagenet_labels",
    "load_checkpoint",
    "pretrained_url",
    "relative_position_index",
    "sha256_file",
    "shifted_window_mask",
    "window_partition",
    "window_reverse",
]
