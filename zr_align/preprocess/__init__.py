"""Differentiable, torch-only image preprocessing for each supported VLM family (README: "The reward plugin").

Every preprocessor is a callable `(B, 3, H, W)` float in [0, 1] -> `VisionInputs`, built from the model's
Hugging Face `preprocessor_config.json` so that it reproduces the HF processor (the parity oracle in tests).
"""

from __future__ import annotations

from .idefics3 import Idefics3Preprocessor
from .llava import LlavaPreprocessor
from .pixels import CLAMP_MODES, check_images, clamp_pixels, from_signed, normalize
from .qwen_vl import QwenVLPreprocessor
from .resample import pil_resize
from .vision_inputs import VisionInputs

PREPROCESSORS: dict[str, type] = {
    "idefics3": Idefics3Preprocessor,
    "llava": LlavaPreprocessor,
    "qwen_vl": QwenVLPreprocessor,
}


def build_preprocessor(name: str, processor_config: dict, **options):
    """Build preprocessor `name` from an HF image-processor config dict; `options` are its keyword overrides."""
    if name not in PREPROCESSORS:
        raise ValueError(f"unknown preprocessor {name!r}; available: {', '.join(PREPROCESSORS)}")
    return PREPROCESSORS[name].from_processor_config(processor_config, **options)


__all__ = [
    "CLAMP_MODES",
    "PREPROCESSORS",
    "QwenVLPreprocessor",
    "VisionInputs",
    "build_preprocessor",
    "check_images",
    "clamp_pixels",
    "from_signed",
    "normalize",
    "pil_resize",
]
