"""Hugging Face processors for the tiny models: the parity oracle our torch preprocessing is tested against."""

from __future__ import annotations

import json
from pathlib import Path

from ..rewards.loading import load_tokenizer

from .idefics3 import _idefics3_processor
from .llava import _llava_processor


def _qwen_processor(path: Path):
    from transformers import Qwen2VLProcessor
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    class _StillImageProcessor(Qwen2VLProcessor):
        # Without torchvision there is no video processor, and the stock class check rejects None
        # (transformers 5.x, see shared/PITFALLS.md). Images need none.
        def check_argument_for_proper_class(self, argument_name, argument):
            return type(argument)

    config = json.loads((path / "preprocessor_config.json").read_text())
    config = {k: v for k, v in config.items() if k != "image_processor_type"}
    tokenizer = load_tokenizer(path)
    return _StillImageProcessor(image_processor=Qwen2VLImageProcessorPil(**config), tokenizer=tokenizer,
                                video_processor=None)


# family -> builder(folder) of the HF processor matching a tiny reward-model folder
HF_PROCESSORS = {
    "idefics3": _idefics3_processor,
    "qwen2_vl": _qwen_processor,
    "qwen2_5_vl": _qwen_processor,
    "qwen3_vl": _qwen_processor,
    "qwen3_5": _qwen_processor,
    "llava": _llava_processor,
}


def hf_processor(path):
    """The stock HF processor for the reward-model folder `path` (the tiny models of `zr_align.testing`)."""
    path = Path(path)
    family = json.loads((path / "zreward_config.json").read_text())["family"]
    if family not in HF_PROCESSORS:
        raise ValueError(f"no HF processor oracle for family {family!r}; available: {', '.join(HF_PROCESSORS)}")
    return HF_PROCESSORS[family](path)


def parity_gap(reward_model, processor, image, prompt: str) -> float:
    """Largest |E_ours - E_hf| over the rubric dimensions for one uint8 `(H, W, 3)` image.

    Ours: the float tensor through `reward_model` (torch preprocessing). Theirs: the PIL image through the
    stock HF `processor`, then the same score-slot read-out.
    """
    import numpy as np
    import torch
    from PIL import Image

    from ..scores import ScoreDistribution

    texts = reward_model.build_texts([prompt], reward_model.family.image_token)
    pil = Image.fromarray(np.asarray(image))
    encoded = processor(text=texts, images=[[pil] for _ in texts], return_tensors="pt", padding=True)
    pixels = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)[None].float() / 255.0
    with torch.no_grad():
        ours = reward_model(pixels, [prompt])
        theirs = ScoreDistribution.from_logits(reward_model.slot_logits(**encoded), reward_model.bin_values)
    ours_means = torch.stack([ours.scores[d].mean[0] for d in reward_model.dimensions])
    return (ours_means - theirs.mean).abs().max().item()
