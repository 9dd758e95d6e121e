"""transformers image-processor configs, as a Hub folder's preprocessor_config.json holds them."""

from __future__ import annotations


def clip_processor(shortest_edge: int, crop: int, mean: list[float], std: list[float]) -> dict:
    """CLIP's rule: resize the shortest edge, centre crop, rescale by 1/255, normalise."""
    return {
        "image_processor_type": "CLIPImageProcessor",
        "do_resize": True,
        "size": {"shortest_edge": shortest_edge},
        "resample": 3,
        "do_center_crop": True,
        "crop_size": {"height": crop, "width": crop},
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": mean,
        "image_std": std,
        "do_convert_rgb": True,
    }
