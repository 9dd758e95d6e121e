"""The Swin network: window helpers, masks, position index, shapes, batch freedom, tracing."""

import dataclasses

import pytest
import torch

from swin_serve.model import PRESETS, SwinConfig, build_model, get_config
from swin_serve.model.swin import (
    MASK_VALUE,
    PatchMerging,
    relative_position_index,
    shifted_window_mask,
    window_partition,
    window_reverse,
)

MICRO = "swin_micro_patch4_window4_64"


@pytest.mark.parametrize(
    ("B", "H", "W", "C", "M"),
    [(1, 7, 7, 3, 7), (2, 14, 21, 5, 7), (3, 8, 8, 4, 4), (2, 24, 12, 1, 12)],
)
def test_window_partition_round_trip(B, H, W, C, M):
    x = torch.randn(B, H, W, C)
    windows = window_partition(x, M)
    assert windows.shape == (B * (H // M) * (W // M), M, M, C)
    # The first window is the top-left M x M block of the first image.
    assert torch.equal(windows[0], x[0, :M, :M])
    assert torch.equal(window_reverse(windows, M, H, W), x)


def test_shifted_mask_has_the_papers_3x3_region_structure():
    M, s, Hp = 7, 3, 14  # a 2x2 grid of windows
    mask = shifted_window_mask(Hp, Hp, M, s)
    assert mask.shape == (4, M * M, M * M)
    assert set(mask.unique().tolist()) == {0.0, MASK_VALUE}

    # Rebuild the region id of every token from the paper's picture: rows and columns split
    # into [0, Hp-M), [Hp-M, Hp-s), [Hp-s, Hp).
    def band(i):
        return 0 if i < Hp - M else (1 if i < Hp - s else 2)

    region = torch.tensor([[band(r) * 3 + band(c) for c in range(Hp)] for r in range(Hp)])
    ids = window_partition(region[None, :, :, None].float(), M).view(4, M * M)
    for w in range(4):
        same = ids[w][:, None] == ids[w][None, :]
        assert torch.equal(mask[w] == 0, same), f"window {w}"
        assert (mask[w][~same] == MASK_VALUE).all()
    # Window 0 (top-left) holds one region: no boundary, all zeros. The bottom-right window
    # holds four regions.
    assert (mask[0] == 0).all()
    assert ids[3].unique().numel() == 4
    assert ids[1].unique().numel() == 2 and ids[2].unique().numel() == 2


def test_shifted_mask_on_a_larger_map_is_zero_away_from_the_edges():
    M, s, Hp = 7, 3, 56
    mask = shifted_window_mask(Hp, Hp, M, s).view(Hp // M, Hp // M, M * M, M * M)
    assert (mask[:-1, :-1] == 0).all()  # interior windows contain no boundary
    assert (mask[-1, :] != 0).any(dim=(1, 2)).all()  # every last-row window does
    assert (mask[:, -1] != 0).any(dim=(1, 2)).all()


@pytest.mark.parametrize("M", [2, 4, 7, 12])
def test_relative_position_index(M):
    index = relative_position_index(M)
    N = M * M
    assert index.shape == (N, N)
    assert index.min() >= 0 and index.max() < (2 * M - 1) ** 2
    centre = (M - 1) * (2 * M - 1) + (M - 1)
    assert (index.diagonal() == centre).all()
    # Swapping i and j negates the offset: the index mirrors around the centre entry.
    assert torch.equal(index + index.T, torch.full((N, N), 2 * centre))
    # Spot-check the formula for token (0,0) against token (M-1, M-1).
    assert index[0, N - 1] == 0
    assert index[N - 1, 0] == (2 * M - 1) ** 2 - 1


def test_patch_merging_matches_the_official_strided_concat():
    merge = PatchMerging(resolution=6, dim=3, eps=1e-5)
    x = torch.randn(2, 6, 6, 3)
    merged_input = {}
    merge.norm.register_forward_hook(lambda m, inp, out: merged_input.setdefault("x", inp[0]))
    merge(x.view(2, 36, 3))
    x0, x1, x2, x3 = x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]
    expected = torch.cat([x0, x1, x2, x3], -1).view(2, 9, 12)
    assert torch.equal(merged_input["x"], expected)


def test_odd_map_is_padded_before_merging():
    merge = PatchMerging(resolution=7, dim=2, eps=1e-5)
    assert merge(torch.randn(3, 49, 2)).shape == (3, 16, 4)


@pytest.mark.parametrize("name", sorted(PRESETS))
@pytest.mark.parametrize("batch", [1, 3])
def test_every_preset_gives_the_documented_shapes(name, batch):
    cfg = PRESETS[name]
    with torch.device("meta"):  # shapes only: the large presets would take seconds on CPU
        model = build_model(name)
        feats = model.forward_features(torch.empty(batch, 3, cfg.img_size, cfg.img_size))
        logits = model.head(feats["embedding"])
    side = cfg.img_size // 4
    for i in range(4):
        assert feats[f"stage{i + 1}"].shape == (batch, cfg.embed_dim * 2**i, side >> i, side >> i)
    assert feats["embedding"].shape == (batch, cfg.embed_dim * 8)
    assert logits.shape == (batch, 1000)


def test_swin_tiny_shapes_match_the_issue():
    with torch.device("meta"):
        feats = build_model("swin_tiny_patch4_window7_224").forward_features(
            torch.empty(1, 3, 224, 224)
        )
    assert [tuple(feats[f"stage{i}"].shape[1:]) for i in range(1, 5)] == [
        (96, 56, 56),
        (192, 28, 28),
        (384, 14, 14),
        (768, 7, 7),
    ]


def test_num_classes_22k_and_other_input_sizes():
    with torch.device("meta"):
        model = build_model("swin_base_patch4_window7_224", num_classes=21841, img_size=256)
        assert model(torch.empty(2, 3, 256, 256)).shape == (2, 21841)


def test_small_final_map_shrinks_the_window_and_drops_the_shift():
    geo = get_config("swin_tiny_patch4_window7_224").stages()
    assert [(g.resolution, g.window, g.shift, g.padded) for g in geo] == [
        (56, 7, 3, 56),
        (28, 7, 3, 28),
        (14, 7, 3, 14),
        (7, 7, 0, 7),
    ]
    model = build_model(MICRO)
    last = model.layers[3].blocks[1]
    assert (last.M, last.shift, last.attn_mask) == (2, 0, None)
    assert last.attn.relative_position_bias_table.shape == (9, 8)


def test_non_multiple_of_window_is_padded_and_masks_cover_the_padded_map():
    model = build_model("swin_tiny_patch4_window7_224", img_size=256)
    block = model.layers[0].blocks[1]
    assert (block.H, block.Hp, block.M, block.shift) == (64, 70, 7, 3)
    assert block.attn_mask.shape == (100, 49, 49)  # (70/7)^2 windows
    with torch.device("meta"):
        feats = build_model("swin_tiny_patch4_window7_224", img_size=256).forward_features(
            torch.empty(1, 3, 256, 256)
        )
    assert feats["stage1"].shape == (1, 96, 64, 64)  # unpadded


@pytest.mark.parametrize("img_size", [0, 222, 3])
def test_unsupported_resolution_fails_at_construction_with_a_reason(img_size):
    with pytest.raises(ValueError, match="multiple of the patch size"):
        build_model(MICRO, img_size=img_size)


def test_bad_configs_say_why():
    with pytest.raises(ValueError, match="4 stages"):
        SwinConfig(depths=(2, 2, 2))
    with pytest.raises(ValueError, match="heads"):
        SwinConfig(embed_dim=96, num_heads=(5, 6, 12, 24))
    with pytest.raises(ValueError, match="unknown variant"):
        build_model("swin_gigantic")


def test_config_is_frozen_and_stores_tuples():
    cfg = SwinConfig(depths=[2, 2, 6, 2])
    assert cfg.depths == (2, 2, 6, 2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.embed_dim = 3


def test_derived_buffers_never_reach_the_state_dict():
    model = build_model(MICRO)
    keys = model.state_dict().keys()
    assert not [k for k in keys if "attn_mask" in k or "relative_position_index" in k]
    buffers = dict(model.named_buffers())
    assert "layers.0.blocks.1.attn_mask" in buffers
    assert "layers.0.blocks.0.attn.relative_position_index" in buffers
    assert "layers.0.blocks.1.attn.qkv.weight" in keys and "head.weight" in keys


def test_logits_of_an_image_do_not_depend_on_the_rest_of_the_batch():
    torch.manual_seed(0)
    model = build_model(MICRO, num_classes=10)
    x = torch.randn(5, 3, 64, 64)
    with torch.inference_mode():
        batched = model.forward_features(x)
        for i in range(5):
            alone = model.forward_features(x[i : i + 1])
            for key, value in alone.items():
                torch.testing.assert_close(batched[key][i : i + 1], value, rtol=1e-5, atol=1e-5)


def test_embedding_is_exactly_what_the_head_sees():
    model = build_model(MICRO, num_classes=10)
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        assert torch.equal(model(x), model.head(model.forward_features(x)["embedding"]))


@pytest.mark.parametrize("name", [MICRO, "swin_tiny_patch4_window7_224"])
def test_traced_at_batch_2_matches_eager_at_other_batch_sizes(name):
    torch.manual_seed(0)
    img = PRESETS[name].img_size
    model = build_model(name, img_size=img if name == MICRO else 160)  # 160: padded stages
    img = model.config.img_size
    with torch.inference_mode():
        traced = torch.jit.trace(model, torch.randn(2, 3, img, img))
        for batch in (1, 3, 5):
            x = torch.randn(batch, 3, img, img)
            torch.testing.assert_close(traced(x), model(x), rtol=1e-4, atol=1e-4)
