"""Swin Transformer V1 (Liu et al., 2021, arXiv 2103.14030), inference-only, trace-safe.

Shape notation: B batch, H/W token-map sides, Hp/Wp padded sides, C channels, M window side,
N = M*M tokens per window, nW windows per image, h heads, d = C/h head width.

Every spatial size is fixed at construction from the config, so `forward` does no arithmetic on
tensor sizes: the batch is always `-1` in reshapes and stays symbolic when traced. The attention
masks and relative-position indices are non-persistent buffers computed once by the pure
functions below; tracing turns them into graph constants. Module attribute names follow the
official checkpoint keys, so official weights load after dropping their stored buffers.
Dropout and stochastic depth are omitted: this model is for inference.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import StageGeometry, SwinConfig, get_config

MASK_VALUE = -100.0  # the official code's "minus infinity" between tokens of different regions


def window_partition(x: Tensor, M: int) -> Tensor:
    """(B, H, W, C) -> (B*nW, M, M, C). H and W must be multiples of M."""
    _, H, W, C = x.shape
    x = x.view(-1, H // M, M, W // M, M, C)  # B, H/M, M, W/M, M, C
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, M, M, C)  # B*nW, M, M, C


def window_reverse(windows: Tensor, M: int, H: int, W: int) -> Tensor:
    """(B*nW, M, M, C) -> (B, H, W, C), the inverse of `window_partition`."""
    C = windows.shape[-1]
    x = windows.view(-1, H // M, W // M, M, M, C)  # B, H/M, W/M, M, M, C
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, H, W, C)  # B, H, W, C


def relative_position_index(M: int) -> Tensor:
    """(N, N) int64 index into a ((2M-1)^2, h) bias table, N = M*M.

    Entry (i, j) encodes the offset of token i from token j: (dy + M-1) * (2M-1) + (dx + M-1).
    """
    coords = torch.stack(torch.meshgrid(torch.arange(M), torch.arange(M), indexing="ij"))
    coords = coords.flatten(1)  # 2, N
    offsets = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (M - 1)  # N, N, 2
    return offsets[..., 0] * (2 * M - 1) + offsets[..., 1]  # N, N


def shifted_window_mask(Hp: int, Wp: int, M: int, shift: int) -> Tensor:
    """(nW, N, N) additive mask for shifted windows on a padded (Hp, Wp) map.

    After the cyclic shift, a window at the bottom or right edge holds tokens from up to three
    regions per axis (3x3 in all). Tokens from different regions get MASK_VALUE, others 0.
    """
    regions = torch.zeros(1, Hp, Wp, 1)
    bands = (slice(0, -M), slice(-M, -shift), slice(-shift, None))
    for r, h in enumerate(bands):
        for c, w in enumerate(bands):
            regions[:, h, w, :] = r * 3 + c
    ids = window_partition(regions, M).view(-1, M * M)  # nW, N
    differs = ids[:, None, :] != ids[:, :, None]  # nW, N, N
    return torch.zeros(differs.shape).masked_fill(differs, MASK_VALUE)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class WindowAttention(nn.Module):
    """softmax(Q K^T / sqrt(d) + B + mask) V inside each M x M window."""

    def __init__(self, dim: int, M: int, heads: int, qkv_bias: bool = True):
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * M - 1) ** 2, heads))
        self.register_buffer(
            "relative_position_index", relative_position_index(M), persistent=False
        )
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def relative_position_bias(self) -> Tensor:
        """(h, N, N), gathered from the table; constant-folded when exported."""
        N = self.relative_position_index.shape[0]
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        return bias.view(N, N, self.heads).permute(2, 0, 1)  # h, N, N

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        """x: (B*nW, N, C); mask: (nW, N, N) or None -> (B*nW, N, C)."""
        _, N, C = x.shape
        h = self.heads
        qkv = self.qkv(x).view(-1, N, 3, h, C // h).permute(2, 0, 3, 1, 4)  # 3, B*nW, h, N, d
        q, k, v = qkv.unbind(0)
        attn = (q * self.scale) @ k.transpose(-2, -1)  # B*nW, h, N, N
        attn = attn + self.relative_position_bias()
        if mask is not None:
            nW = mask.shape[0]
            attn = attn.view(-1, nW, h, N, N) + mask[None, :, None]  # B, nW, h, N, N
            attn = attn.view(-1, h, N, N)  # B*nW, h, N, N
        x = attn.softmax(dim=-1) @ v  # B*nW, h, N, d
        return self.proj(x.transpose(1, 2).reshape(-1, N, C))  # B*nW, N, C


class SwinBlock(nn.Module):
    """Pre-norm block: (shifted) window attention, then MLP, each with a residual."""

    def __init__(self, geo: StageGeometry, shift: int, config: SwinConfig):
        super().__init__()
        self.H = self.W = geo.resolution
        self.Hp = self.Wp = geo.padded
        self.M, self.shift = geo.window, shift
        self.norm1 = nn.LayerNorm(geo.dim, eps=config.layer_norm_eps)
        self.attn = WindowAttention(geo.dim, geo.window, geo.heads, config.qkv_bias)
        self.norm2 = nn.LayerNorm(geo.dim, eps=config.layer_norm_eps)
        self.mlp = Mlp(geo.dim, int(geo.dim * config.mlp_ratio))
        mask = shifted_window_mask(self.Hp, self.Wp, self.M, shift) if shift else None
        self.register_buffer("attn_mask", mask, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, H*W, C) -> (B, H*W, C)."""
        x = x + self.windowed_attention(self.norm1(x))
        return x + self.mlp(self.norm2(x))

    def windowed_attention(self, x: Tensor) -> Tensor:
        H, W, Hp, Wp, M, s = self.H, self.W, self.Hp, self.Wp, self.M, self.shift
        C = x.shape[-1]
        x = x.view(-1, H, W, C)  # B, H, W, C
        if (Hp, Wp) != (H, W):
            x = F.pad(x, (0, 0, 0, Wp - W, 0, Hp - H))  # B, Hp, Wp, C
        if s:
            x = torch.roll(x, shifts=(-s, -s), dims=(1, 2))
        windows = window_partition(x, M).view(-1, M * M, C)  # B*nW, N, C
        windows = self.attn(windows, self.attn_mask).view(-1, M, M, C)  # B*nW, M, M, C
        x = window_reverse(windows, M, Hp, Wp)  # B, Hp, Wp, C
        if s:
            x = torch.roll(x, shifts=(s, s), dims=(1, 2))
        if (Hp, Wp) != (H, W):
            x = x[:, :H, :W, :]
        return x.reshape(-1, H * W, C)  # B, H*W, C


class PatchMerging(nn.Module):
    """(B, H*W, C) -> (B, ceil(H/2)*ceil(W/2), 2C): concat 2x2 neighbours, LayerNorm, Linear.

    The concat order is the official x0=[0::2, 0::2], x1=[1::2, 0::2], x2=[0::2, 1::2],
    x3=[1::2, 1::2], done as one reshape + permute instead of four strided slices.
    """

    def __init__(self, resolution: int, dim: int, eps: float):
        super().__init__()
        self.H = self.W = resolution
        self.norm = nn.LayerNorm(4 * dim, eps=eps)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        H, W = self.H, self.W
        C = x.shape[-1]
        x = x.view(-1, H, W, C)  # B, H, W, C
        if H % 2 or W % 2:
            x = F.pad(x, (0, 0, 0, W % 2, 0, H % 2))
        H2, W2 = (H + 1) // 2, (W + 1) // 2
        x = x.view(-1, H2, 2, W2, 2, C)  # B, H/2, dy, W/2, dx, C
        x = x.permute(0, 1, 3, 4, 2, 5).reshape(-1, H2 * W2, 4 * C)  # B, H/2*W/2, (dx dy C)
        return self.reduction(self.norm(x))


class SwinStage(nn.Module):
    def __init__(self, geo: StageGeometry, config: SwinConfig, downsample: bool):
        super().__init__()
        self.blocks = nn.ModuleList(
            SwinBlock(geo, 0 if j % 2 == 0 else geo.shift, config) for j in range(geo.depth)
        )
        self.downsample = (
            PatchMerging(geo.resolution, geo.dim, config.layer_norm_eps) if downsample else None
        )

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(B, L, C) -> (stage output before merging, input of the next stage)."""
        for block in self.blocks:
            x = block(x)
        return x, (self.downsample(x) if self.downsample is not None else x)


class PatchEmbed(nn.Module):
    def __init__(self, config: SwinConfig):
        super().__init__()
        p = config.patch_size
        self.proj = nn.Conv2d(config.in_chans, config.embed_dim, kernel_size=p, stride=p)
        self.norm = nn.LayerNorm(config.embed_dim, eps=config.layer_norm_eps)

    def forward(self, x: Tensor) -> Tensor:
        """(B, 3, S, S) -> (B, (S/p)^2, C)."""
        return self.norm(self.proj(x).flatten(2).transpose(1, 2))


class SwinTransformer(nn.Module):
    def __init__(self, config: SwinConfig):
        super().__init__()
        self.config = config
        self.geometry = config.stages()
        self.patch_embed = PatchEmbed(config)
        last = len(self.geometry) - 1
        self.layers = nn.ModuleList(
            SwinStage(geo, config, downsample=i < last) for i, geo in enumerate(self.geometry)
        )
        self.norm = nn.LayerNorm(config.num_features, eps=config.layer_norm_eps)
        self.head = nn.Linear(config.num_features, config.num_classes)
        self.apply(_init_weights)
        for layer in self.layers:
            for block in layer.blocks:
                nn.init.trunc_normal_(block.attn.relative_position_bias_table, std=0.02)

    def forward_features(self, x: Tensor) -> dict[str, Tensor]:
        """(B, 3, S, S) -> stage1..stage4 as (B, C_i, H_i, W_i) and `embedding` (B, C_4).

        Each stage map is that stage's output before its patch merging, unpadded; `embedding`
        is the final LayerNorm + average pool, exactly what the head sees.
        """
        features = {}
        x = self.patch_embed(x)  # B, L, C
        for i, (layer, geo) in enumerate(zip(self.layers, self.geometry, strict=True)):
            out, x = layer(x)
            R = geo.resolution
            features[f"stage{i + 1}"] = out.view(-1, R, R, geo.dim).permute(0, 3, 1, 2)
        features["embedding"] = self.norm(out).mean(dim=1)  # B, C4
        return features

    def forward(self, x: Tensor) -> Tensor:
        """(B, 3, S, S) -> logits (B, num_classes)."""
        return self.head(self.forward_features(x)["embedding"])


def _init_weights(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


def build_model(
    name: str, *, num_classes: int = 1000, img_size: int | None = None
) -> SwinTransformer:
    """A randomly initialised preset, in eval mode. Load weights with `load_checkpoint`."""
    return SwinTransformer(get_config(name, num_classes=num_classes, img_size=img_size)).eval()
