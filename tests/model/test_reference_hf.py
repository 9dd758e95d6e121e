"""Numerical agreement with an independent implementation: HuggingFace transformers' Swin.

transformers' SwinForImageClassification is a port of the official code that its authors
validated against the released weights. We build it with random weights, load its state dict
through our HF converter, and require the same logits and stage features. This pins the whole
forward (shifted windows, masks, relative-position bias, merging order, padding), not just
key names.
"""

import pytest
import torch
from transformers import SwinConfig as HFSwinConfig
from transformers import SwinForImageClassification

from swin_serve.model import SwinConfig, SwinTransformer, load_checkpoint


def hf_and_ours(img_size: int, window: int, depths=(2, 2, 2, 2)):
    torch.manual_seed(0)
    hf = SwinForImageClassification(
        HFSwinConfig(
            image_size=img_size,
            patch_size=4,
            embed_dim=24,
            depths=list(depths),
            num_heads=[1, 2, 4, 8],
            window_size=window,
            num_labels=10,
            hidden_act="gelu",
            layer_norm_eps=1e-5,
        )
    ).eval()
    with torch.no_grad():  # non-trivial norms and biases, so a swapped tensor shows
        for param in hf.parameters():
            param.add_(torch.randn_like(param) * 0.02)
    ours = SwinTransformer(
        SwinConfig(24, depths, (1, 2, 4, 8), window, img_size, num_classes=10)
    ).eval()
    load_checkpoint(ours, hf.state_dict())
    return hf, ours


# HF keeps a stage's bias table at the configured window even where the map is smaller than
# the window (the official code, and ours, shrink the window and its table), so the oracle runs
# on geometries where the last map is no smaller than the window, as in every released model.
@pytest.mark.parametrize(
    ("img_size", "window"),
    [
        (224, 7),  # Swin-T's geometry (56, 28, 14, 7) at a small width
        (96, 3),  # 24, 12, 6, 3
        (80, 3),  # 20 and 10 are padded to 21 and 12 (masks on the padded map); odd 5 merged to 3
    ],
)
def test_logits_and_stages_match_transformers(img_size, window):
    hf, ours = hf_and_ours(img_size, window)
    x = torch.randn(3, 3, img_size, img_size)
    with torch.inference_mode():
        theirs = hf(pixel_values=x, output_hidden_states=True)
        mine = ours.forward_features(x)
        logits = ours.head(mine["embedding"])
    torch.testing.assert_close(logits, theirs.logits, rtol=1e-4, atol=1e-5)
    # HF's reshaped_hidden_states[i+1] is stage i's output after its patch merging; its
    # hidden states before merging are not exposed, so compare the final map and the pooled
    # embedding, which the head sees.
    torch.testing.assert_close(
        mine["embedding"], hf.swin(pixel_values=x).pooler_output, rtol=1e-4, atol=1e-5
    )
    torch.testing.assert_close(
        mine["stage4"], theirs.reshaped_hidden_states[-1], rtol=1e-4, atol=1e-5
    )
