"""An official-format checkpoint at 384 px, exported with no flags, is served through the official
384 evaluation (`Resize((384, 384))`, no crop): the served logits equal PyTorch's on that
transform, on real photos.

The micro preset at --img-size 384 stands in for swin_base/large_patch4_window12_384, whose
export takes minutes here: the rule is the input size's (src/swin_serve/export/preprocessing.py), and
tests/export/test_preprocessing.py pins that those presets get it.
"""

from __future__ import annotations

import base64

import numpy as np
import pytest
import torch
from PIL import Image

from swin_serve.export.pipeline import ExportOptions, Progress, run_export
from swin_serve.model import SwinTransformer, get_config
from swin_serve.model.weights import randomize
from swin_serve.server.http.app import create_app
from swin_serve.server.settings import Settings
from tests.artifact.test_preprocess_frameworks import official_build_transform

pytestmark = pytest.mark.anyio
MICRO, SIZE = "swin_micro_patch4_window4_64", 384
PHOTOS = ["flower.jpg", "flower2.jpg", "hopper.jpg"]


@pytest.fixture(scope="module")
def official_384(tmp_path_factory):
    """A random-weights micro model saved in the official layout, and its export at 384."""
    out = tmp_path_factory.mktemp("official-384")
    model = SwinTransformer(get_config(MICRO, img_size=SIZE)).eval()
    randomize(model, seed=3)
    checkpoint = out / "swin_micro_384.pth"
    torch.save({"model": model.state_dict()}, checkpoint)
    options = ExportOptions(
        variant=MICRO,
        checkpoint=str(checkpoint),
        img_size=SIZE,
        out_dir=out,
        parity_batch_sizes=(1, 2),
    )
    return model, run_export(options, Progress())


async def test_an_official_384_checkpoint_serves_the_official_384_transform(
    official_384, images_dir, serve
):
    model, result = official_384
    spec = result.manifest.preprocess
    assert (spec.resize_mode, spec.resize_shorter, spec.crop_size) == ("squash", SIZE, SIZE)
    assert result.manifest.preprocessing_source == "the official evaluation at 384px (no crop)"
    assert result.manifest.format_version == 2  # older servers would crop: they must refuse
    app = create_app(Settings(model_path=result.model_path, providers="cpu"))
    name = result.manifest.name
    async with serve(app) as client:
        for photo in PHOTOS:
            path = images_dir / photo
            body = {
                "inputs": [
                    {
                        "name": "image",
                        "datatype": "BYTES",
                        "shape": [1],
                        "data": [base64.b64encode(path.read_bytes()).decode()],
                    }
                ],
                "outputs": [{"name": "logits"}],
            }
            response = await client.post(f"/v2/models/{name}/infer", json=body)
            assert response.status_code == 200, response.text
            served = np.asarray(response.json()["outputs"][0]["data"], dtype=np.float64)
            with torch.inference_mode():
                x = torch.from_numpy(official_build_transform(rgb_of(path), SIZE))[None]
                reference = model(x)[0].double().numpy()
            cos = served @ reference / (np.linalg.norm(served) * np.linalg.norm(reference))
            assert cos >= 0.9999, (photo, cos)


def rgb_of(path) -> Image.Image:
    with Image.open(path) as im:
        return im.convert("RGB")
