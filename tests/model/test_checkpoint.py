"""Checkpoint loading: official / timm / HuggingFace round trips, strictness and its errors.

Every foreign checkpoint here is made by the test from our own random weights, with an inverse
conversion written independently of src/swin_serve/model/checkpoint.py, so a wrong rename, a wrong q/k/v
order or a wrongly shifted downsample shows up as different logits.
"""

import argparse
import fractions
import re

import pytest
import safetensors.torch
import torch

from swin_serve.model.checkpoint import (
    CheckpointError,
    UntrustedCheckpointError,
    detect_format,
    infer_architecture,
    load_checkpoint,
    read_safetensors,
)
from swin_serve.model.config import SwinConfig
from swin_serve.model.swin import SwinTransformer, build_model
from swin_serve.model.weights import WeightsError, load_weights

# The micro preset's shapes (shifted windows in stages 1-2, shrunken windows in 3-4), 10 classes.
TINY = SwinConfig(
    embed_dim=24,
    depths=(2, 2, 2, 2),
    num_heads=(1, 2, 4, 8),
    window_size=4,
    img_size=64,
    num_classes=10,
)


def make_model(seed: int) -> SwinTransformer:
    torch.manual_seed(seed)
    model = SwinTransformer(TINY).eval()
    with torch.no_grad():  # LayerNorms start at 1/0 and biases at 0; randomise those too
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model


@pytest.fixture(scope="module")
def source_model() -> SwinTransformer:
    return make_model(seed=0)


@pytest.fixture(scope="module")
def pixels() -> torch.Tensor:
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))


def logits(model: SwinTransformer, pixels: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(pixels)


def ours(model: SwinTransformer) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


# ----------------------------------------------------------------- inverse conversions (test-only)


def block_keys(sd):
    """(stage, block) pairs present in our state dict."""
    pairs = {
        tuple(map(int, m.groups()))
        for k in sd
        if (m := re.match(r"layers\.(\d+)\.blocks\.(\d+)\.", k))
    }
    return sorted(pairs)


def to_official(sd):
    """{"model": sd} plus the persistent buffers the official code saved, as garbage."""
    out = dict(sd)
    for stage, block in block_keys(sd):
        prefix = f"layers.{stage}.blocks.{block}"
        out[f"{prefix}.attn.relative_position_index"] = torch.randint(0, 5, (16, 16))
        if block % 2 == 1:
            out[f"{prefix}.attn_mask"] = torch.full((4, 16, 16), 123.0)
    return {"model": out}


def to_timm(sd):
    """timm >= 0.9: merging at the start of the next stage, head.fc, fresh index buffers."""
    out = {}
    for key, value in sd.items():
        m = re.match(r"layers\.(\d+)\.downsample\.(.+)", key)
        if m:
            key = f"layers.{int(m.group(1)) + 1}.downsample.{m.group(2)}"
        elif key.startswith("head."):
            key = "head.fc." + key[len("head.") :]
        out[key] = value
    out["layers.0.blocks.0.attn.relative_position_index"] = torch.zeros(16, 16, dtype=torch.long)
    return out


HF_BLOCK = {
    4: {  # the files on the Hub (transformers 4)
        "norm1": "layernorm_before",
        "norm2": "layernorm_after",
        "attn.proj": "attention.output.dense",
        "mlp.fc1": "intermediate.dense",
        "mlp.fc2": "output.dense",
        "table": "attention.self.relative_position_bias_table",
        "q": "attention.self.query",
        "k": "attention.self.key",
        "v": "attention.self.value",
        "index": "attention.self.relative_position_index",
    },
    5: {  # transformers 5
        "norm1": "layernorm_before",
        "norm2": "layernorm_after",
        "attn.proj": "attention.o_proj",
        "mlp.fc1": "mlp.fc1",
        "mlp.fc2": "mlp.fc2",
        "table": "attention.relative_position_bias.relative_position_bias_table",
        "q": "attention.q_proj",
        "k": "attention.k_proj",
        "v": "attention.v_proj",
        "index": "attention.relative_position_bias.relative_position_index",
    },
}


def to_hf(sd, generation: int):
    """SwinForImageClassification keys of one generation; qkv split into query/key/value."""
    names = HF_BLOCK[generation]
    out = {}
    for key, value in sd.items():
        if key.startswith("patch_embed.proj."):
            out["swin.embeddings.patch_embeddings.projection." + key.split(".")[-1]] = value
        elif key.startswith("patch_embed.norm."):
            out["swin.embeddings.norm." + key.split(".")[-1]] = value
        elif key.startswith("norm."):
            out["swin.layernorm." + key.split(".")[-1]] = value
        elif key.startswith("head."):
            out["classifier." + key.split(".")[-1]] = value
        elif ".downsample." in key:
            out["swin.encoder." + key] = value
        else:
            m = re.match(
                r"(layers\.\d+\.blocks\.\d+)\.(.+)\.(weight|bias|relative_position_bias_table)$",
                key,
            )
            prefix, module, param = m.groups()
            base = f"swin.encoder.{prefix}."
            if param == "relative_position_bias_table":
                out[base + names["table"]] = value
                out[base + names["index"]] = torch.randint(0, 3, (16, 16))
            elif module == "attn.qkv":
                for name, part in zip("qkv", value.chunk(3, dim=0), strict=True):
                    out[f"{base}{names[name]}.{param}"] = part.clone()
            else:
                out[f"{base}{names[module]}.{param}"] = value
    return out


# ----------------------------------------------------------------- round trips


def save_pth(obj, path):
    torch.save(obj, path)
    return path


def hf_dir(sd, tmp_path, filename):
    d = tmp_path / "hf_model"
    d.mkdir()
    (d / "config.json").write_text('{"model_type": "swin"}')
    if filename == "model.safetensors":
        safetensors.torch.save_file({k: v.contiguous() for k, v in sd.items()}, d / filename)
    else:
        torch.save(sd, d / filename)
    return d


SOURCES = {
    "official dict": lambda sd, tmp: to_official(sd),
    "official .pth": lambda sd, tmp: save_pth(to_official(sd), tmp / "swin.pth"),
    "official bare dict": lambda sd, tmp: to_official(sd)["model"],
    "official str path": lambda sd, tmp: str(save_pth(to_official(sd), tmp / "swin.pth")),
    "state_dict wrapper + DDP prefix": lambda sd, tmp: {
        "state_dict": {"module." + k: v for k, v in sd.items()}
    },
    "timm dict": lambda sd, tmp: to_timm(sd),
    "timm .pth": lambda sd, tmp: save_pth(to_timm(sd), tmp / "timm.pth"),
    "timm safetensors dir": lambda sd, tmp: hf_dir(to_timm(sd), tmp, "model.safetensors"),
    "hf4 dict": lambda sd, tmp: to_hf(sd, 4),
    "hf4 safetensors dir": lambda sd, tmp: hf_dir(to_hf(sd, 4), tmp, "model.safetensors"),
    "hf4 pytorch_model.bin dir": lambda sd, tmp: hf_dir(to_hf(sd, 4), tmp, "pytorch_model.bin"),
    "hf4 safetensors file": lambda sd, tmp: (
        hf_dir(to_hf(sd, 4), tmp, "model.safetensors") / "model.safetensors"
    ),
    "hf5 dict": lambda sd, tmp: to_hf(sd, 5),
    "hf5 safetensors dir": lambda sd, tmp: hf_dir(to_hf(sd, 5), tmp, "model.safetensors"),
    "hf5 pytorch_model.bin dir": lambda sd, tmp: hf_dir(to_hf(sd, 5), tmp, "pytorch_model.bin"),
}


@pytest.mark.parametrize("kind", list(SOURCES))
def test_round_trip_gives_identical_logits(kind, source_model, pixels, tmp_path):
    source = SOURCES[kind](ours(source_model), tmp_path)
    fresh = make_model(seed=1)
    expected = logits(source_model, pixels)
    assert not torch.equal(logits(fresh, pixels), expected)  # the load below must do the work

    load_checkpoint(fresh, source)

    assert torch.equal(logits(fresh, pixels), expected)


@pytest.mark.parametrize(
    ("make", "fmt"),
    [
        (lambda sd: to_official(sd)["model"], "official"),
        (to_timm, "timm"),
        (lambda sd: to_hf(sd, 4), "huggingface"),
        (lambda sd: to_hf(sd, 5), "huggingface"),
    ],
)
def test_format_is_detected_from_keys(make, fmt, source_model):
    assert detect_format(make(ours(source_model))) == fmt


def test_timm_headless_checkpoint_is_detected_from_the_downsample_position(source_model):
    sd = {k: v for k, v in to_timm(ours(source_model)).items() if not k.startswith("head.")}
    assert detect_format(sd) == "timm"


def test_official_buffers_are_ignored_not_loaded(source_model):
    fresh = make_model(seed=2)
    before = {k: v.clone() for k, v in fresh.named_buffers()}
    load_checkpoint(fresh, to_official(ours(source_model)))
    for name, buffer in fresh.named_buffers():
        assert torch.equal(buffer, before[name]), name


def test_timm_merge_order_equals_the_official_x0_x1_x2_x3():
    # Why timm (and our model) need no permutation of the merge weights: the reshape/permute
    # concat of timm.models.swin_transformer.PatchMerging equals the official four slices.
    B, H, W, C = 2, 6, 8, 5
    x = torch.randn(B, H, W, C)
    timm = x.reshape(B, H // 2, 2, W // 2, 2, C).permute(0, 1, 3, 4, 2, 5).flatten(3)
    official = torch.cat(
        [x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1
    )
    assert torch.equal(timm, official)
    # And the HF Hub order, [row::2, col::2] for col in (0, 1) for row in (0, 1), too.
    hf = torch.cat([x[:, r::2, c::2] for c in range(2) for r in range(2)], dim=-1)
    assert torch.equal(hf, official)


# ----------------------------------------------------------------- errors


def test_wrong_variant_names_keys_and_suggests_the_preset():
    with torch.device("meta"):
        small = build_model("swin_small_patch4_window7_224").state_dict()
        tiny = build_model("swin_tiny_patch4_window7_224")

    with pytest.raises(CheckpointError) as err:
        load_checkpoint(tiny, {"model": small})

    message = str(err.value)
    assert isinstance(err.value, ValueError)
    assert "unexpected keys (" in message and "layers.2.blocks.6." in message
    assert "depths=(2, 2, 18, 2)" in message  # what the checkpoint is
    assert "fits preset swin_small_patch4_window7_224" in message
    assert "build_model('swin_small_patch4_window7_224', num_classes=1000)" in message


def test_wrong_width_reports_shape_mismatches_and_the_fitting_preset():
    with torch.device("meta"):
        base = build_model("swin_base_patch4_window12_384", num_classes=21841).state_dict()
        tiny = build_model("swin_tiny_patch4_window7_224")
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(tiny, base)
    message = str(err.value)
    assert "shape mismatches (" in message
    assert "patch_embed.proj.weight checkpoint (128, 3, 4, 4) vs model (96, 3, 4, 4)" in message
    assert "swin_base_patch4_window12_384', num_classes=21841" in message


def test_wrong_class_count_names_the_head(source_model):
    model = SwinTransformer(SwinConfig(24, (2, 2, 2, 2), (1, 2, 4, 8), 4, 64, num_classes=5))
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(model, ours(source_model))
    message = str(err.value)
    assert "head.weight checkpoint (10, 192) vs model (5, 192)" in message
    assert "swin_micro_patch4_window4_64', num_classes=10" in message


def test_checkpoint_for_a_larger_input_explains_shrunken_windows():
    with torch.device("meta"):
        at_224 = build_model("swin_tiny_patch4_window7_224").state_dict()
        at_64 = build_model("swin_tiny_patch4_window7_224", img_size=64)  # stages 3-4 shrink
    with pytest.raises(CheckpointError, match="img_size") as err:
        load_checkpoint(at_64, at_224)
    assert "layers.2.blocks.0.attn.relative_position_bias_table" in str(err.value)


def test_missing_key_is_named(source_model):
    sd = ours(source_model)
    del sd["norm.weight"]
    with pytest.raises(CheckpointError, match=r"missing keys \(1\): norm\.weight") as err:
        load_checkpoint(make_model(seed=3), sd)
    assert "the keys listed above are the problem" in str(err.value)  # not a variant issue


def test_unexpected_key_is_named(source_model):
    sd = ours(source_model)
    sd["absolute_pos_embed"] = torch.zeros(1, 256, 24)
    with pytest.raises(CheckpointError, match=r"unexpected keys \(1\): absolute_pos_embed"):
        load_checkpoint(make_model(seed=3), sd)


def test_long_key_lists_are_truncated(source_model):
    sd = {k: v for k, v in ours(source_model).items() if not k.startswith("layers.1.")}
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(make_model(seed=3), sd)
    message = str(err.value)
    assert re.search(r"missing keys \((\d+)\): .*\.\.\. and \d+ more", message)
    assert len(message) < 2500


def test_failed_load_leaves_the_model_untouched(source_model, pixels):
    fresh = make_model(seed=4)
    before = logits(fresh, pixels)
    sd = ours(source_model)
    del sd["head.bias"]
    with pytest.raises(CheckpointError):
        load_checkpoint(fresh, sd)
    assert torch.equal(logits(fresh, pixels), before)


def test_hf_checkpoint_missing_a_value_projection_names_it(source_model):
    sd = to_hf(ours(source_model), 4)
    del sd["swin.encoder.layers.1.blocks.0.attention.self.value.weight"]
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(make_model(seed=5), sd)
    message = str(err.value)
    assert "layers.1.blocks.0.attn.qkv.weight" in message  # missing in ours
    assert "swin.encoder.layers.1.blocks.0.attention.self.query.weight" in message


def test_unknown_layout_is_rejected():
    with pytest.raises(CheckpointError, match="unrecognised checkpoint layout"):
        load_checkpoint(make_model(seed=6), {"encoder.weight": torch.zeros(2)})


def test_missing_path_and_empty_directory_are_clear_errors(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(make_model(seed=6), tmp_path / "nope.pth")
    with pytest.raises(CheckpointError, match=r"model\.safetensors"):
        load_checkpoint(make_model(seed=6), tmp_path)


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_pickles_with_python_objects_need_trust(source_model, pixels, tmp_path, zip_format):
    path = tmp_path / "full.pth"
    full = {"model": ours(source_model), "config": fractions.Fraction(1, 10)}
    torch.save(full, path, _use_new_zipfile_serialization=zip_format)
    with pytest.raises(UntrustedCheckpointError, match="trusted=True") as err:
        load_checkpoint(make_model(seed=7), path)
    if zip_format:  # only the zip format can be listed without unpickling it
        assert "fractions.Fraction" in str(err.value)
    with pytest.raises(WeightsError, match="--trust-checkpoint"):
        load_weights(make_model(seed=7), str(path), variant="swin_micro_patch4_window4_64")
    fresh = make_model(seed=7)
    load_checkpoint(fresh, path, trusted=True)
    assert torch.equal(logits(fresh, pixels), logits(source_model, pixels))


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_a_timm_train_checkpoint_loads_without_trust(source_model, pixels, tmp_path, zip_format):
    """What timm's train.py saves: the weights beside its options as an argparse.Namespace, the
    optimizer's state and the epoch; the Namespace is plain data, allowed without trust."""
    path = tmp_path / "checkpoint-9.pth.tar"
    args = argparse.Namespace(model="swin_micro", lr=5e-4, mean=(0.5, 0.5, 0.5), aa=None)
    saved = {
        "epoch": 9,
        "arch": "swin_micro",
        "state_dict": to_timm(ours(source_model)),
        "optimizer": {"state": {}, "param_groups": [{"lr": 5e-4, "params": [0, 1]}]},
        "version": 2,
        "args": args,
        "metric": 91.5,
    }
    torch.save(saved, path, _use_new_zipfile_serialization=zip_format)
    fresh = make_model(seed=8)
    load_checkpoint(fresh, path)
    assert torch.equal(logits(fresh, pixels), logits(source_model, pixels))


@pytest.mark.parametrize(
    "key",
    [
        "swinv2.encoder.layers.0.blocks.0.attention.self.logit_scale",  # transformers
        "layers.0.blocks.0.attn.logit_scale",  # the official code and timm
        "layers.0.blocks.0.attn.cpb_mlp.0.weight",
    ],
)
def test_a_swin_v2_checkpoint_is_refused_as_v2(key):
    state = {key: torch.zeros(1), "patch_embed.proj.weight": torch.zeros(1)}
    with pytest.raises(CheckpointError, match=r"Swin Transformer V2 checkpoint.*only Swin V1"):
        load_checkpoint(make_model(seed=9), state)


# ----------------------------------------------------------------- safetensors reader


def test_safetensors_reader_matches_the_reference_library(tmp_path):
    g = torch.Generator().manual_seed(0)
    tensors = {
        "f32": torch.randn(3, 5, generator=g),
        "f16": torch.randn(7, generator=g).half(),
        "bf16": torch.randn(2, 2, 2, generator=g).bfloat16(),
        "f64": torch.randn(1, generator=g).double(),
        "i64": torch.arange(-3, 6),
        "i32": torch.arange(4, dtype=torch.int32).view(2, 2),
        "u8": torch.arange(250, 256, dtype=torch.uint8),
        "bool": torch.tensor([True, False, True]),
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 4),
    }
    path = tmp_path / "t.safetensors"
    safetensors.torch.save_file(tensors, path, metadata={"format": "pt"})

    loaded = read_safetensors(path)

    assert loaded.keys() == tensors.keys()
    for name, tensor in tensors.items():
        assert loaded[name].dtype == tensor.dtype, name
        assert torch.equal(loaded[name], tensor), name


@pytest.mark.parametrize(
    "corrupt",
    [
        lambda b: b[:4],  # shorter than the length prefix
        lambda b: (10**9).to_bytes(8, "little") + b[8:],  # header longer than the file
        lambda b: b[:8] + b"!" + b[9:],  # header is not JSON
        lambda b: b[:-4],  # data shorter than the offsets say
    ],
)
def test_safetensors_reader_rejects_corrupt_files(corrupt, tmp_path):
    path = tmp_path / "t.safetensors"
    safetensors.torch.save_file({"w": torch.ones(4, 4)}, path)
    path.write_bytes(corrupt(path.read_bytes()))
    with pytest.raises(CheckpointError):
        read_safetensors(path)


def test_infer_architecture_reads_the_micro_shapes(source_model):
    arch = infer_architecture({k: v.shape for k, v in source_model.state_dict().items()})
    assert arch == {
        "embed_dim": 24,
        "patch_size": 4,
        "depths": (2, 2, 2, 2),
        "num_heads": (1, 2, 4, 8),
        "window_size": 4,
        "num_classes": 10,
    }
