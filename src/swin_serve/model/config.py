"""Swin Transformer V1 configurations: one frozen dataclass and the named presets.

A variant is a name that maps to a config, nothing more. Every preset can be rebuilt at another
input size with `dataclasses.replace(cfg, img_size=...)`; `SwinConfig.stages()` then works out
the per-stage geometry (map size, window, shift, padding) and refuses sizes it cannot support.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

NUM_STAGES = 4


@dataclass(frozen=True)
class StageGeometry:
    """The static geometry of one stage, fixed at construction.

    `resolution` is the stage's token map side (unpadded); `window` and `shift` are the ones the
    blocks actually use (the window shrinks to the map when the map is no larger than it, as in the
    official code); `padded` is the map side rounded up to a multiple of `window`.
    """

    resolution: int
    window: int
    shift: int
    padded: int
    dim: int
    heads: int
    depth: int


@dataclass(frozen=True)
class SwinConfig:
    embed_dim: int = 96
    depths: tuple[int, ...] = (2, 2, 6, 2)
    num_heads: tuple[int, ...] = (3, 6, 12, 24)
    window_size: int = 7
    img_size: int = 224
    patch_size: int = 4
    in_chans: int = 3
    num_classes: int = 1000
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    layer_norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        # Lists would make the config mutable and unhashable; accept them but store tuples.
        object.__setattr__(self, "depths", tuple(self.depths))
        object.__setattr__(self, "num_heads", tuple(self.num_heads))
        self.stages()  # validates

    @property
    def num_features(self) -> int:
        """Channels of the last stage, the width of the pooled embedding."""
        return self.embed_dim * 2 ** (NUM_STAGES - 1)

    @property
    def stage_dims(self) -> tuple[int, ...]:
        return tuple(self.embed_dim * 2**i for i in range(NUM_STAGES))

    def stages(self) -> tuple[StageGeometry, ...]:
        """Per-stage geometry. Raises ValueError, saying why, for an unsupported config."""
        if len(self.depths) != NUM_STAGES or len(self.num_heads) != NUM_STAGES:
            raise ValueError(
                f"Swin V1 has {NUM_STAGES} stages: got depths={self.depths}, "
                f"num_heads={self.num_heads}"
            )
        if min(self.depths) < 1:
            raise ValueError(f"every stage needs at least one block, got depths={self.depths}")
        for name in ("embed_dim", "window_size", "patch_size", "in_chans", "num_classes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.img_size < self.patch_size or self.img_size % self.patch_size:
            raise ValueError(
                f"img_size={self.img_size} is not supported: it must be a positive multiple of "
                f"the patch size {self.patch_size}, so that the patch grid covers the image exactly"
            )
        geometry = []
        resolution = self.img_size // self.patch_size
        for i, (dim, heads, depth) in enumerate(
            zip(self.stage_dims, self.num_heads, self.depths, strict=True)
        ):
            if dim % heads:
                raise ValueError(f"stage {i + 1}: {dim} channels do not split into {heads} heads")
            if resolution <= self.window_size:
                window, shift = resolution, 0  # official rule: the window shrinks, no shift
            else:
                window, shift = self.window_size, self.window_size // 2
            padded = math.ceil(resolution / window) * window
            geometry.append(StageGeometry(resolution, window, shift, padded, dim, heads, depth))
            resolution = math.ceil(resolution / 2)  # an odd map is padded before merging
        return tuple(geometry)


PRESETS: dict[str, SwinConfig] = {
    "swin_tiny_patch4_window7_224": SwinConfig(96, (2, 2, 6, 2), (3, 6, 12, 24), 7, 224),
    "swin_small_patch4_window7_224": SwinConfig(96, (2, 2, 18, 2), (3, 6, 12, 24), 7, 224),
    "swin_base_patch4_window7_224": SwinConfig(128, (2, 2, 18, 2), (4, 8, 16, 32), 7, 224),
    "swin_base_patch4_window12_384": SwinConfig(128, (2, 2, 18, 2), (4, 8, 16, 32), 12, 384),
    "swin_large_patch4_window7_224": SwinConfig(192, (2, 2, 18, 2), (6, 12, 24, 48), 7, 224),
    "swin_large_patch4_window12_384": SwinConfig(192, (2, 2, 18, 2), (6, 12, 24, 48), 12, 384),
    # Not a released model: a few-hundred-kB network with the same structure (shifted windows
    # in stages 1-2, a shrunken window in stage 4), for tests and demos.
    "swin_micro_patch4_window4_64": SwinConfig(24, (2, 2, 2, 2), (1, 2, 4, 8), 4, 64),
}


def get_config(name: str, *, num_classes: int = 1000, img_size: int | None = None) -> SwinConfig:
    """The preset `name`, optionally at another class count or input size."""
    try:
        config = PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown variant {name!r}; choose one of: {', '.join(PRESETS)}") from None
    return replace(
        config, num_classes=num_classes, img_size=config.img_size if img_size is None else img_size
    )
