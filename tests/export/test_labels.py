"""Where the head's size and names come from, and how disagreeing sources are refused.

That the names reach /classify is pinned down in tests/server/test_fine_tuned.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from swin_serve.export import manifest
from swin_serve.export.__main__ import main as export_main
from swin_serve.export.labels import LabelsError, decide_head, huggingface_labels, read_labels_file
from swin_serve.model import build_model, class_labels
from swin_serve.model.weights import randomize

MICRO = "swin_micro_patch4_window4_64"
FLOWERS = ("daisy", "dandelion", "rose", "sunflower", "tulip")
pytestmark = pytest.mark.anyio


def fine_tune(num_classes: int) -> dict[str, torch.Tensor]:
    model = build_model(MICRO, num_classes=num_classes)
    randomize(model, seed=3)
    return {k: v.contiguous() for k, v in model.state_dict().items()}


def export(tmp_path, *args: str) -> tuple[int, str]:
    out = tmp_path / "out"
    argv = ["--variant", MICRO, "--out", str(out), "--parity-batch-sizes", "1,3", *args]
    return export_main(argv), str(out / f"{MICRO}.onnx")


def test_labels_that_disagree_with_the_head_stop_the_export_naming_both(tmp_path, capsys):
    checkpoint = tmp_path / "five.pth"
    torch.save({"model": fine_tune(5)}, checkpoint)
    labels = tmp_path / "four.txt"
    labels.write_text("a\nb\nc\nd\n")

    rc, model_path = export(tmp_path, "--checkpoint", str(checkpoint), "--labels", str(labels))

    assert not Path(model_path).exists()
    err = capsys.readouterr().err
    assert rc == 1 and "LabelsError" in err
    assert "four.txt (4 names)" in err and "the checkpoint's classifier (5 classes)" in err


def test_num_classes_that_disagrees_with_the_checkpoint_is_refused():
    with pytest.raises(
        LabelsError, match=r"classifier \(5 classes\) disagrees with --num-classes 10"
    ):
        decide_head(num_classes=10, labels_file=None, checkpoint_classes=5, checkpoint_labels=None)


def test_without_any_source_the_head_is_imagenet_1k():
    head = decide_head(
        num_classes=None, labels_file=None, checkpoint_classes=None, checkpoint_labels=None
    )
    assert head.num_classes == 1000 and head.labels[0] == "tench"


def test_a_22k_head_without_names_says_so_rather_than_guess_an_order():
    names = class_labels(21841)
    assert len(names) == 21841 and names[0] == "class_0" and names[-1] == "class_21840"
    head = decide_head(
        num_classes=21841, labels_file=None, checkpoint_classes=None, checkpoint_labels=None
    )
    assert head.labels == names and head.labels_source == "none given: class_<i>"


def test_a_head_of_no_classes_is_refused_with_its_source():
    with pytest.raises(LabelsError, match="--num-classes 0: a head needs at least one class"):
        decide_head(
            num_classes=0, labels_file=None, checkpoint_classes=None, checkpoint_labels=None
        )


def test_only_a_huggingface_config_is_read_never_any_config_json_beside_a_checkpoint(tmp_path):
    # The official training script writes a YAML config.json beside its ckpt_epoch_N.pth.
    (tmp_path / "config.json").write_text("MODEL:\n  TYPE: swin\n")
    (tmp_path / "ckpt_epoch_9.pth").touch()
    assert huggingface_labels(str(tmp_path / "ckpt_epoch_9.pth")) is None
    (tmp_path / "config.json").write_text(json.dumps({"id2label": {"0": "a", "1": "b"}}))
    assert huggingface_labels(str(tmp_path / "ckpt_epoch_9.pth")) is None  # not an HF file name
    assert huggingface_labels(str(tmp_path / "model.safetensors")) == ("a", "b")
    assert huggingface_labels(str(tmp_path)) == ("a", "b")


def test_a_labels_file_wins_and_the_config_json_is_not_consulted(tmp_path, capsys):
    folder = tmp_path / "hf"
    folder.mkdir()
    torch.save({"model": fine_tune(3)}, folder / "pytorch_model.bin")
    (folder / "config.json").write_text(json.dumps({"id2label": dict(enumerate("abcde"))}))
    labels = tmp_path / "three.txt"
    labels.write_text("x\ny\nz\n")
    rc, model_path = export(tmp_path, "--checkpoint", str(folder), "--labels", str(labels))
    assert rc == 0, capsys.readouterr().err
    assert manifest.read(model_path).labels == ("x", "y", "z")


@pytest.mark.parametrize(
    ("text", "suffix", "expected"),
    [
        ("cat\ndog\n\n", ".txt", ("cat", "dog")),
        ("\ufeffcat\ndog\n", ".txt", ("cat", "dog")),  # a BOM, as some editors write
        ("[x]\n{y}\n", ".txt", ("[x]", "{y}")),  # a text file is never read as JSON
        ('["cat", "dog"]', ".json", ("cat", "dog")),
        ('{"1": "dog", "0": "cat"}', ".json", ("cat", "dog")),
        ('{"id2label": {"0": "cat", "1": "dog"}, "num_labels": 2}', ".json", ("cat", "dog")),
    ],
)
def test_labels_files_in_every_documented_form(tmp_path, text, suffix, expected):
    path = tmp_path / f"labels{suffix}"
    path.write_text(text)
    assert read_labels_file(path) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("cat\n\ndog\n", "line 2 is empty"),
        ("", "holds no names"),
        ('{"0": "cat", "2": "dog"}', "indices must be 0..1"),
        ("[1, 2]", "expected a list of names"),
        ("[oops", "not valid JSON"),
    ],
)
def test_bad_labels_files_are_refused_with_the_reason(tmp_path, text, message):
    path = tmp_path / ("labels.json" if text.startswith(("[", "{")) else "labels.txt")
    path.write_text(text)
    with pytest.raises(LabelsError, match=message):
        read_labels_file(path)


def test_a_config_json_whose_num_labels_disagrees_with_id2label_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(
        json.dumps({"num_labels": 3, "id2label": {"0": "a", "1": "b"}})
    )
    with pytest.raises(LabelsError, match="num_labels is 3 but id2label names 2"):
        huggingface_labels(str(tmp_path))
