"""Train a tiny Swin digit classifier and save it as a HuggingFace fine-tune.

Data is scikit-learn's bundled copy of the UCI "Optical Recognition of
Handwritten Digits" set (1797 8x8 images, CC BY 4.0). Each digit is drawn onto
a tall 32x48 canvas by ``render.py``; the held-out set uses fixed seeded
offsets, training draws fresh offsets every epoch. Tensors come from the saved
``ViTImageProcessor`` itself, so training and evaluation see exactly the HF
transform (squash to 128x128, /255, mean/std 0.5).

Writes, under ``--out`` and next to this file:
  <out>/config.json, model.safetensors, preprocessor_config.json
  heldout.npz    raw digits, offsets and labels to re-render the held-out set
  accuracy.json  held-out accuracy measured here, seed, epochs, versions, time

Needs scikit-learn, which the project does not install (only this script uses
it):  pip install scikit-learn

Run from the repo root:
  .venv/bin/python samples/digits/train.py --out samples/digits/model
"""

import argparse
import json
import math
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import transformers
from PIL import Image
from transformers import SwinConfig, SwinForImageClassification, ViTImageProcessor

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # so `render` imports when run as a script
from render import MAX_OFFSET, render  # noqa: E402

IMG_SIZE = 128
HELDOUT_FRACTION = 0.22
MAX_SHIFT = 2  # sideways training jitter in canvas pixels (a digit pixel is 4)
LABEL_SMOOTHING = 0.1


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=HERE / "model")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    return p.parse_args()


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    # Two threads fixes the reduction order as well as the speed.
    torch.set_num_threads(2)


def load_split(seed):
    """Stratified, seeded train/held-out split of the raw 8x8 digits."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    ds = load_digits()
    digits = ds.images.astype(np.uint8)  # values are integers 0..16
    return train_test_split(
        digits,
        ds.target.astype(np.int64),
        test_size=HELDOUT_FRACTION,
        stratify=ds.target,
        random_state=seed,
    )


def make_processor():
    return ViTImageProcessor(
        do_resize=True,
        size={"height": IMG_SIZE, "width": IMG_SIZE},
        resample=Image.BILINEAR,
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )


def make_model():
    labels = {i: str(i) for i in range(10)}
    # Exact shape the project exports as preset swin_micro_patch4_window4_64
    # at --img-size 128: stage maps 32,16,8,4, never below the window.
    config = SwinConfig(
        image_size=IMG_SIZE,
        patch_size=4,
        num_channels=3,
        embed_dim=24,
        depths=[2, 2, 2, 2],
        num_heads=[1, 2, 4, 8],
        window_size=4,
        mlp_ratio=4.0,
        num_labels=10,
        id2label=labels,
        label2id={v: k for k, v in labels.items()},
        hidden_act="gelu",
        layer_norm_eps=1e-5,
        # Stochastic depth: 1.4k images are memorised well before 40 epochs.
        drop_path_rate=0.1,
    )
    return SwinForImageClassification(config)


def shift_sideways(image, dx):
    """Move the canvas content dx pixels right (left if negative), black fill."""
    shifted = Image.new("RGB", image.size, (0, 0, 0))
    shifted.paste(image, (int(dx), 0))
    return shifted


def to_pixels(processor, digits, offsets, shifts=None):
    """HF processor tensors; ``shifts`` jitters training images sideways."""
    images = [render(d, o) for d, o in zip(digits, offsets, strict=True)]
    if shifts is not None:
        images = [shift_sideways(im, dx) for im, dx in zip(images, shifts, strict=True)]
    return processor(images=images, return_tensors="pt")["pixel_values"]


def make_scheduler(optimizer, total_steps, warmup_steps):
    """Linear warm-up, then cosine decay to zero: stable start from scratch."""

    def factor(step):
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def train_epoch(model, optimizer, scheduler, pixels, labels, batch_size, gen):
    model.train()
    order = torch.randperm(len(labels), generator=gen)
    total = 0.0
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        logits = model(pixel_values=pixels[idx]).logits
        # Label smoothing: the training set is small enough to be memorised.
        loss = F.cross_entropy(logits, labels[idx], label_smoothing=LABEL_SMOOTHING)
        optimizer.zero_grad()
        loss.backward()
        # Clipping keeps the from-scratch start stable at a high learning rate.
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        total += loss.item() * len(idx)
    return total / len(order)


@torch.no_grad()
def count_correct(model, pixels, labels, batch_size=128):
    model.eval()
    correct = 0
    for start in range(0, len(labels), batch_size):
        logits = model(pixel_values=pixels[start : start + batch_size]).logits
        correct += int((logits.argmax(-1) == labels[start : start + batch_size]).sum())
    return correct


def train(args, model, processor, train_digits, train_labels, eval_pixels, eval_labels):
    rng = np.random.default_rng(args.seed + 1)  # training offsets (augmentation)
    gen = torch.Generator().manual_seed(args.seed)  # batch order
    steps_per_epoch = math.ceil(len(train_labels) / args.batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.05)
    scheduler = make_scheduler(optimizer, args.epochs * steps_per_epoch, steps_per_epoch)
    labels = torch.from_numpy(train_labels)
    correct = 0
    for epoch in range(1, args.epochs + 1):
        # Fresh offsets and jitter every epoch: the augmentation.
        offsets = rng.integers(0, MAX_OFFSET + 1, size=len(train_labels))
        shifts = rng.integers(-MAX_SHIFT, MAX_SHIFT + 1, size=len(train_labels))
        pixels = to_pixels(processor, train_digits, offsets, shifts)
        loss = train_epoch(model, optimizer, scheduler, pixels, labels, args.batch_size, gen)
        correct = count_correct(model, eval_pixels, eval_labels)
        print(
            f"epoch {epoch:2d}/{args.epochs}  loss {loss:.4f}  "
            f"held-out {correct}/{len(eval_labels)} = {correct / len(eval_labels):.4f}",
            flush=True,
        )
    return correct


def main():
    args = parse_args()
    seed_everything(args.seed)
    train_digits, held_digits, train_labels, held_labels = load_split(args.seed)
    # Held-out offsets are fixed once, so the tests can re-render them exactly.
    held_offsets = np.random.default_rng(args.seed).integers(
        0, MAX_OFFSET + 1, size=len(held_labels)
    )
    processor = make_processor()
    model = make_model()
    eval_pixels = to_pixels(processor, held_digits, held_offsets)
    eval_labels = torch.from_numpy(held_labels)
    print(
        f"train {len(train_labels)}  held-out {len(held_labels)}  "
        f"params {sum(p.numel() for p in model.parameters())}",
        flush=True,
    )

    started = time.perf_counter()
    train(args, model, processor, train_digits, train_labels, eval_pixels, eval_labels)
    wall = time.perf_counter() - started
    # Measure the final number the same way the tests will: fresh processor
    # output from the saved processor, model in eval mode.
    correct = count_correct(model, to_pixels(processor, held_digits, held_offsets), eval_labels)

    args.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.out, safe_serialization=True)
    processor.save_pretrained(args.out)
    np.savez_compressed(
        HERE / "heldout.npz",
        digits=held_digits.astype(np.uint8),
        offsets=held_offsets.astype(np.int64),
        labels=held_labels.astype(np.int64),
    )
    report = {
        "correct": correct,
        "n": len(held_labels),
        "accuracy": correct / len(held_labels),
        "preprocessing": "HF ViTImageProcessor saved with the model",
        "seed": args.seed,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "train_size": len(train_labels),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "train_wall_s": round(wall, 1),
    }
    (HERE / "accuracy.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
