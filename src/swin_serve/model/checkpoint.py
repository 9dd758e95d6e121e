"""Load Swin V1 weights from the official release, timm or HuggingFace transformers.

`load_checkpoint(model, source)` reads a file, a directory or an in-memory state dict, detects
which of the three layouts it is in, converts it to ours with one small pure function per
format, and then loads it with `strict=True`. Anything that still does not fit raises
`CheckpointError`, which names the offending keys and the preset the checkpoint's shapes fit.

Our key names are the official ones (`layers.{i}.blocks.{j}.attn.qkv.weight`, merging at the
end of stage i in `layers.{i}.downsample`, `head.weight`), so the official format needs only a
filter, and each foreign format a renaming:

- official: drop the persistent `attn_mask` / `relative_position_index` buffers the official
  code stored; we recompute them at construction for the model's own input size.
- timm (>= 0.9): the patch merging sits at the START of the next stage
  (`layers.{i+1}.downsample`) and the head is `head.fc`. Its merge concatenates in the same
  order as the official one (see `_timm_to_ours`), so the weights need no permutation.
- HuggingFace transformers `SwinForImageClassification`, in both key generations: the Hub
  files (transformers 4: `attention.self.query/key/value`, `attention.output.dense`,
  `intermediate.dense`, `output.dense`) and transformers 5 (`attention.q_proj/k_proj/v_proj/
  o_proj`, `attention.relative_position_bias.relative_position_bias_table`, `mlp.fc1/fc2`).
  q, k and v are separate Linears there and are concatenated into our fused `qkv`.

`.safetensors` files are read with the `safetensors` package, imported only when one is read.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import pickle
import re
import zipfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from .config import PRESETS

StateDict = dict[str, Tensor]

# Filenames looked for, in order, when `source` is a directory (a HuggingFace model folder).
DIRECTORY_FILES = ("model.safetensors", "pytorch_model.bin")
# Derived buffers that older code stored in checkpoints; we recompute them at construction.
DERIVED_BUFFERS = ("relative_position_index", "attn_mask")
MAX_LISTED_KEYS = 8  # keys named per category in an error before "... and N more"


class CheckpointError(ValueError):
    """A checkpoint that cannot be read, or whose weights do not fit the model."""


class UntrustedCheckpointError(CheckpointError):
    """A pickle holding Python objects besides tensors, read without `trusted=True`."""


# --------------------------------------------------------------------------- public entry point


def load_checkpoint(
    model: nn.Module, source: str | os.PathLike | Mapping, *, trusted: bool = False
) -> None:
    """Load `source` into `model` strictly, converting official / timm / HuggingFace layouts.

    `source` is a checkpoint file (`.pth`, `.pt`, `.bin`, `.safetensors`), a directory holding
    `model.safetensors` or `pytorch_model.bin`, or an in-memory state dict, bare or wrapped as
    `{"model": sd}` / `{"state_dict": sd}`. Pickled files are read with
    `torch.load(weights_only=True)`; `trusted=True` allows arbitrary pickles (only for files
    you trust: unpickling can run code).

    Raises `CheckpointError` (a ValueError) naming the missing, unexpected or mis-shaped keys
    and the preset variant that the checkpoint's shapes fit.
    """
    state = read_state_dict(source, trusted=trusted)
    fmt = detect_format(state)
    converted = CONVERTERS[fmt](state)
    check_fits(model, converted, fmt=fmt)
    model.load_state_dict(converted, strict=True)


# --------------------------------------------------------------------------- reading


def read_state_dict(source: str | os.PathLike | Mapping, *, trusted: bool = False) -> StateDict:
    """A flat {name: tensor} dict from a path or a mapping, wrappers and `module.` removed."""
    return _unwrap(
        source if isinstance(source, Mapping) else _read_path(Path(source), trusted=trusted)
    )


# Classes the restricted unpickler may rebuild beside tensors: plain data, rebuilt without running
# any code of the file's. timm's train.py saves its argparse.Namespace of options as "args".
PLAIN_DATA_CLASSES = [argparse.Namespace]


def _read_path(path: Path, *, trusted: bool) -> object:
    if path.is_dir():
        for name in DIRECTORY_FILES:
            if (path / name).is_file():
                return _read_path(path / name, trusted=trusted)
        raise CheckpointError(
            f"{path} is a directory without any of {', '.join(DIRECTORY_FILES)} "
            "(sharded checkpoints are not supported)"
        )
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        return read_safetensors(path)
    try:
        with torch.serialization.safe_globals(PLAIN_DATA_CLASSES):
            return torch.load(path, map_location="cpu", weights_only=not trusted)
    except pickle.UnpicklingError as e:
        if trusted:
            raise CheckpointError(f"could not read checkpoint {path}: {e}") from e
        raise _untrusted(path, e) from e
    except Exception as e:  # torch raises RuntimeError, EOFError, OSError...
        raise CheckpointError(f"could not read checkpoint {path}: {e}") from e


def _untrusted(path: Path, error: pickle.UnpicklingError) -> CheckpointError:
    """What `weights_only` refused: the objects a zip checkpoint names, else torch's words.

    torch's restricted unpickler raises UnpicklingError for an object it does not allow; only
    the zip format (torch >= 1.6) can be listed without unpickling, so an old-format file, or a
    damaged one, gets the hint with torch's own message.
    """
    names: list[str] = []
    if zipfile.is_zipfile(path):
        with contextlib.suppress(RuntimeError, ValueError, pickle.UnpicklingError):
            allowed = {f"{c.__module__}.{c.__qualname__}" for c in PLAIN_DATA_CLASSES}
            names = [
                n
                for n in torch.serialization.get_unsafe_globals_in_checkpoint(path)
                if n not in allowed
            ]
    if zipfile.is_zipfile(path) and not names:
        return CheckpointError(f"could not read checkpoint {path}: {error}")
    held = f"it holds Python objects besides tensors ({_listed(names)})" if names else str(error)
    return UntrustedCheckpointError(
        f"could not read checkpoint {path}: {held}. If you trust the file, pass trusted=True, "
        "or re-save only its state dict."
    )


def _unwrap(obj: object) -> StateDict:
    """Peel `{"model": sd}` / `{"state_dict": sd}` and a DistributedDataParallel `module.`."""
    for _ in range(2):  # e.g. {"state_dict": {"model": sd}} is not worth more depth
        if isinstance(obj, Mapping):
            for wrapper in ("model", "state_dict"):
                if isinstance(obj.get(wrapper), Mapping):
                    obj = obj[wrapper]
                    break
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(f"expected a non-empty state dict, got {type(obj).__name__}")
    non_tensors = [k for k, v in obj.items() if not isinstance(v, Tensor)]
    if non_tensors:
        raise CheckpointError(f"state dict entries that are not tensors: {_listed(non_tensors)}")
    state = {str(k): v for k, v in obj.items()}
    if all(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return state


def read_safetensors(path: str | os.PathLike) -> StateDict:
    """Every tensor of a `.safetensors` file, on the CPU."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(path, device="cpu")
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file: {e}") from e


# --------------------------------------------------------------------------- format detection


def _is_swin_v2(keys: set[str]) -> bool:
    """V2's own parameters: HF's ``swinv2.`` prefix, or the official/timm ``logit_scale`` and
    ``cpb_mlp`` (continuous position bias) of every attention block."""
    return any(
        k.startswith("swinv2.") or k.endswith((".logit_scale", ".cpb_mlp.0.weight")) for k in keys
    )


def detect_format(state: Mapping[str, Tensor]) -> str:
    """Which layout `state` is in: "official", "timm" or "huggingface" (key names only)."""
    keys = set(state)
    if _is_swin_v2(keys):
        raise CheckpointError(
            "this is a Swin Transformer V2 checkpoint (its attention has a learned logit scale "
            "and a continuous position bias); only Swin V1 (Liu et al., 2021) is supported"
        )
    if any(k.startswith("swin.") for k in keys):
        return "huggingface"
    stage_of_merge = {
        int(m.group(1)) for k in keys if (m := re.match(r"layers\.(\d+)\.downsample\.", k))
    }
    # timm puts merging at the start of stages 1..3 and names the head head.fc; the official
    # code (and timm < 0.9, whose keys are identical to it) at the end of stages 0..2.
    if "head.fc.weight" in keys or (stage_of_merge and 0 not in stage_of_merge):
        return "timm"
    if "patch_embed.proj.weight" in keys:
        return "official"
    raise CheckpointError(
        "unrecognised checkpoint layout (expected official Swin, timm or HuggingFace "
        f"transformers keys); first keys: {_listed(sorted(keys))}"
    )


# --------------------------------------------------------------------------- conversions


def _drop_derived(state: Mapping[str, Tensor]) -> StateDict:
    return {k: v for k, v in state.items() if k.rsplit(".", 1)[-1] not in DERIVED_BUFFERS}


def _official_to_ours(state: Mapping[str, Tensor]) -> StateDict:
    """Official keys are ours; only the stored derived buffers go."""
    return _drop_derived(state)


def _timm_to_ours(state: Mapping[str, Tensor]) -> StateDict:
    """Move merging from the start of stage i+1 to the end of stage i; `head.fc` -> `head`.

    timm merges with `x.reshape(B, H/2, 2, W/2, 2, C).permute(0, 1, 3, 4, 2, 5).flatten(3)`:
    the channel index is (dx * 2 + dy) * C + c, i.e. the blocks come in the order
    (dy, dx) = (0, 0), (1, 0), (0, 1), (1, 1), which is the official x0, x1, x2, x3 =
    [0::2, 0::2], [1::2, 0::2], [0::2, 1::2], [1::2, 1::2]. So `norm` and `reduction` weights
    carry over unchanged (tests/model/test_checkpoint.py checks the equivalence).
    """
    out: StateDict = {}
    for key, value in _drop_derived(state).items():
        m = re.match(r"layers\.(\d+)\.downsample\.(.*)", key)
        if m and int(m.group(1)) > 0:
            key = f"layers.{int(m.group(1)) - 1}.downsample.{m.group(2)}"
        elif key.startswith("head.fc."):
            key = "head." + key.removeprefix("head.fc.")
        out[key] = value
    return out


# HuggingFace block-level names -> ours, both generations. Order matters: the transformers 4
# `attention.output.dense` must be matched before the MLP's bare `output.dense`.
_HF_BLOCK_RENAMES = (
    ("layernorm_before.", "norm1."),
    ("layernorm_after.", "norm2."),
    ("attention.self.relative_position_bias_table", "attn.relative_position_bias_table"),
    (
        "attention.relative_position_bias.relative_position_bias_table",
        "attn.relative_position_bias_table",
    ),
    ("attention.output.dense.", "attn.proj."),
    ("attention.o_proj.", "attn.proj."),
    ("intermediate.dense.", "mlp.fc1."),
    ("output.dense.", "mlp.fc2."),
)
_HF_QKV = re.compile(r"attention\.(?:self\.(query|key|value)|(q|k|v)_proj)\.(weight|bias)$")
_HF_TOP_RENAMES = (
    ("swin.embeddings.patch_embeddings.projection.", "patch_embed.proj."),
    ("swin.embeddings.norm.", "patch_embed.norm."),
    ("swin.layernorm.", "norm."),
    ("classifier.", "head."),
)


def _huggingface_to_ours(state: Mapping[str, Tensor]) -> StateDict:
    """Rename HF keys to ours and fuse q, k, v (rows in that order) into `attn.qkv`.

    A key with no rule is kept under its HF name, so the strict check reports it (for example
    `swin.embeddings.position_embeddings` of a model with absolute position embeddings).
    """
    out: StateDict = {}
    # "layers.0.blocks.1.attn.qkv.weight" -> {"q": (hf_key, tensor), "k": ..., "v": ...}
    qkv_parts: dict[str, dict[str, tuple[str, Tensor]]] = {}
    for key, value in _drop_derived(state).items():
        m = re.match(r"swin\.encoder\.layers\.(\d+)\.(blocks\.\d+|downsample)\.(.*)", key)
        if m is None:
            out[_hf_top_key(key)] = value
            continue
        stage, where, rest = m.groups()
        if where == "downsample":  # same place (end of stage) and names as ours
            out[f"layers.{stage}.downsample.{rest}"] = value
        elif qkv := _HF_QKV.match(rest):
            part = (qkv.group(1) or qkv.group(2))[0]  # "q", "k" or "v"
            fused = f"layers.{stage}.{where}.attn.qkv.{qkv.group(3)}"
            qkv_parts.setdefault(fused, {})[part] = (key, value)
        else:
            out[f"layers.{stage}.{where}.{_hf_block_rest(rest)}"] = value
    for fused, parts in qkv_parts.items():
        if set(parts) == {"q", "k", "v"}:
            out[fused] = torch.cat([parts[p][1] for p in "qkv"], dim=0)
        else:  # incomplete: keep the parts under their HF names so the strict check names them
            out.update(parts.values())
    return out


def _hf_top_key(key: str) -> str:
    for old, new in _HF_TOP_RENAMES:
        if key.startswith(old):
            return new + key.removeprefix(old)
    return key


def _hf_block_rest(rest: str) -> str:
    for old, new in _HF_BLOCK_RENAMES:
        if rest.startswith(old):
            return new + rest.removeprefix(old)
    return rest


CONVERTERS: dict[str, Callable[[Mapping[str, Tensor]], StateDict]] = {
    "official": _official_to_ours,
    "timm": _timm_to_ours,
    "huggingface": _huggingface_to_ours,
}


# --------------------------------------------------------------------------- strict check


def check_fits(model: nn.Module, state: Mapping[str, Tensor], *, fmt: str = "ours") -> None:
    """Raise `CheckpointError` unless `state` has exactly the model's keys and shapes."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state.items()}
    # Listed in network order (the model's, then the checkpoint's), which reads top-down.
    missing = [k for k in expected if k not in got]
    unexpected = [k for k in got if k not in expected]
    mismatched = [k for k in expected if k in got and expected[k] != got[k]]
    if not (missing or unexpected or mismatched):
        return
    ours, theirs = infer_architecture(expected), infer_architecture(got)
    lines = [
        f"checkpoint ({fmt} format, converted) does not fit the model.",
        f"  model:      {_describe(ours)}",
        f"  checkpoint: {_describe(theirs)}",
    ]
    if missing:
        lines.append(f"  missing keys ({len(missing)}): {_listed(missing)}")
    if unexpected:
        lines.append(f"  unexpected keys ({len(unexpected)}): {_listed(unexpected)}")
    if mismatched:
        shown = [f"{k} checkpoint {got[k]} vs model {expected[k]}" for k in mismatched]
        lines.append(f"  shape mismatches ({len(mismatched)}): {_listed(shown)}")
    lines.append("  " + _suggestion(theirs, ours, mismatched))
    raise CheckpointError("\n".join(lines))


def infer_architecture(shapes: Mapping[str, Iterable[int]]) -> dict[str, object]:
    """What the weights say about the network: embed_dim, depths, heads, window, classes.

    embed_dim from `patch_embed.proj.weight` (C, 3, p, p); depths from the block indices;
    heads from each stage's `relative_position_bias_table` ((2M-1)^2, h); the window M from
    that table's length (the largest over the stages, since a window shrinks to a small final
    map); num_classes from `head.weight`. Absent information is None.
    """
    shapes = {k: tuple(v) for k, v in shapes.items()}
    proj = shapes.get("patch_embed.proj.weight")
    blocks: dict[int, set[int]] = {}
    heads: dict[int, int] = {}
    windows = []
    for key, shape in shapes.items():
        m = re.match(r"layers\.(\d+)\.blocks\.(\d+)\.", key)
        if not m:
            continue
        stage, block = int(m.group(1)), int(m.group(2))
        blocks.setdefault(stage, set()).add(block)
        if key.endswith(".attn.relative_position_bias_table") and len(shape) == 2:
            heads.setdefault(stage, shape[1])
            side = math.isqrt(shape[0])
            if side * side == shape[0] and side % 2 == 1:
                windows.append((side + 1) // 2)
    stages = range(max(blocks) + 1) if blocks else range(0)
    head = shapes.get("head.weight")
    return {
        "embed_dim": proj[0] if proj else None,
        "patch_size": proj[-1] if proj else None,
        "depths": tuple(len(blocks.get(i, ())) for i in stages) or None,
        "num_heads": tuple(heads.get(i) for i in stages) or None,
        "window_size": max(windows) if windows else None,
        "num_classes": head[0] if head else None,
    }


def _describe(arch: Mapping[str, object]) -> str:
    return ", ".join(f"{k}={v}" for k, v in arch.items() if k != "patch_size")


def _suggestion(theirs: dict, ours: dict, mismatched: list[str]) -> str:
    """Name the preset whose architecture the checkpoint's shapes fit, or say none does."""
    matches = [
        name
        for name, cfg in PRESETS.items()
        if (cfg.embed_dim, cfg.depths, cfg.num_heads, cfg.window_size)
        == (theirs["embed_dim"], theirs["depths"], theirs["num_heads"], theirs["window_size"])
    ]
    classes = f", num_classes={theirs['num_classes']}" if theirs["num_classes"] else ""
    if matches and theirs == ours:
        advice = (
            f"the checkpoint's shapes are those of the model (preset {' / '.join(matches)}): "
            "the keys listed above are the problem."
        )
    elif matches:
        arch = " or ".join(f"build_model({name!r}{classes})" for name in matches)
        advice = (
            f"the checkpoint fits preset {' / '.join(matches)}: export it with "
            f"`--variant {matches[0]}` (make VARIANT={matches[0]}), or in Python {arch}."
        )
    else:
        near = [
            name
            for name, cfg in PRESETS.items()
            if (cfg.embed_dim, cfg.depths, cfg.num_heads)
            == (theirs["embed_dim"], theirs["depths"], theirs["num_heads"])
        ]
        advice = "the checkpoint fits no preset"
        advice += f" (closest: {', '.join(near)}, but window differs)." if near else "."
    only_tables = mismatched and all(k.endswith("relative_position_bias_table") for k in mismatched)
    same_arch = {k: v for k, v in theirs.items() if k != "window_size"} == {
        k: v for k, v in ours.items() if k != "window_size"
    }
    if only_tables and same_arch:
        advice += (
            " Only relative-position tables differ: the model was built at an input size where"
            " a stage's map is smaller than the window, so that stage's window (and table)"
            " shrank. Build it at the checkpoint's training size (img_size=)."
        )
    return advice


def _listed(items: list) -> str:
    shown = ", ".join(str(item) for item in items[:MAX_LISTED_KEYS])
    rest = len(items) - MAX_LISTED_KEYS
    return shown + (f", ... and {rest} more" if rest > 0 else "")
