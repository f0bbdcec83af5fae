"""Hugging Face processors for the tiny models: the parity oracle our torch preprocessing is tested against."""

from __future__ import annotations

import json
from pathlib import Path

from ..rewards.loading import load_tokenizer
from ..tiny.llava import PROCESSOR_KEYS


def hf_image_processor(config: dict):
    """The stock PIL image processor for a preprocessor config dict (CLIP, SigLIP or LLaVA)."""
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
    from transformers.models.llava.image_processing_pil_llava import (
        LlavaImageProcessorPil,
    )
    from transformers.models.siglip.image_processing_pil_siglip import (
        SiglipImageProcessorPil,
    )

    classes = {"CLIPImageProcessor": CLIPImageProcessorPil, "SiglipImageProcessor": SiglipImageProcessorPil,
               "LlavaImageProcessor": LlavaImageProcessorPil}
    name = config.get("image_processor_type", "CLIPImageProcessor").removesuffix("Pil")
    if name not in classes:
        raise ValueError(f"no PIL image processor for {name!r}; available: {', '.join(classes)}")
    kwargs = {k: v for k, v in config.items() if k not in PROCESSOR_KEYS and k != "image_processor_type"}
    return classes[name](**kwargs)


def hf_llava_processor(config: dict, tokenizer):
    """The stock `LlavaProcessor` for a preprocessor config dict (with the extra `PROCESSOR_KEYS`)."""
    from transformers import LlavaProcessor

    return LlavaProcessor(
        image_processor=hf_image_processor(config),
        tokenizer=tokenizer,
        patch_size=config.get("patch_size", 14),
        vision_feature_select_strategy=config.get("vision_feature_select_strategy", "default"),
        num_additional_image_tokens=config.get("num_additional_image_tokens", 0),
        image_token="<image>",
    )


def _llava_processor(path: Path):
    """The HF processor (parity oracle) of a tiny LLaVA reward-model folder."""
    from transformers import AutoTokenizer

    path = Path(path)
    config = json.loads((path / "preprocessor_config.json").read_text())
    return hf_llava_processor(config, AutoTokenizer.from_pretrained(path))


def _idefics3_processor(path: Path):
    """The stock `Idefics3Processor` (PIL image processor) for a tiny Idefics3 reward-model folder."""
    from transformers import AutoTokenizer, Idefics3Processor
    from transformers.models.idefics3.image_processing_pil_idefics3 import (
        Idefics3ImageProcessorPil,
    )

    path = Path(path)
    config = json.loads((path / "preprocessor_config.json").read_text())
    image_seq_len = config.pop("image_seq_len", None)
    if image_seq_len is None and (path / "processor_config.json").is_file():
        image_seq_len = json.loads((path / "processor_config.json").read_text()).get("image_seq_len")
    config = {k: v for k, v in config.items() if k not in ("image_processor_type", "processor_class")}
    tokenizer = AutoTokenizer.from_pretrained(path)
    return Idefics3Processor(
        image_processor=Idefics3ImageProcessorPil(**config),
        tokenizer=tokenizer,
        image_seq_len=image_seq_len or 169,
    )


def _qwen_processor(path: Path):
    from transformers import Qwen2VLProcessor
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
        Qwen2VLImageProcessorPil,
    )

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
    """The stock HF processor for the reward-model folder `path` (the tiny models of `zr_align.tiny`)."""
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
