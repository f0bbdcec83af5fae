"""The VLM families a `ZRewardModel` can wrap: model class, image placeholder, default template, preprocessor.

An explicit registry (`FAMILIES`): adding a family is one entry here plus its torch preprocessor in
`zr_align.preprocess`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ..preprocess import build_preprocessor

# ChatML, as used by every Qwen chat model; the prompt ends where the assistant's first token (the score) goes.
CHATML_TEMPLATE = (
    "<|im_start|>system\nYou are an expert judge of generated images.<|im_end|>\n"
    "<|im_start|>user\n{image}Prompt: {prompt}\n"
    "Rate the {dimension} of the image from {low} to {high}. {criterion}<|im_end|>\n"
    "<|im_start|>assistant\n"
)
IDEFICS3_TEMPLATE = (
    "<|im_start|>User:{image}Prompt: {prompt}\n"
    "Rate the {dimension} of the image from {low} to {high}. {criterion}<end_of_utterance>\nAssistant:"
)
LLAVA_TEMPLATE = (
    "USER: {image}\nPrompt: {prompt}\nRate the {dimension} of the image from {low} to {high}. {criterion} ASSISTANT:"
)


def _qwen_mm_token_type_ids(input_ids: torch.Tensor, image_token_id: int) -> dict[str, torch.Tensor]:
    # Qwen-VL's multimodal RoPE needs to know which positions hold image tokens (0 text, 1 image).
    return {"mm_token_type_ids": (input_ids == image_token_id).to(torch.int32)}


def _no_extra_inputs(input_ids: torch.Tensor, image_token_id: int) -> dict[str, torch.Tensor]:
    return {}


def _keep_model(model) -> None:
    return None


def _qwen2_vl_fast_vision(model) -> None:
    from .vision_attention import enable_batched_vision_attention

    enable_batched_vision_attention(model)


def _model_class(name: str) -> Callable[[], type]:
    def load():
        import transformers

        return {
            "Qwen2VLForConditionalGeneration": lambda: transformers.Qwen2VLForConditionalGeneration,
            "Qwen2_5_VLForConditionalGeneration": lambda: transformers.Qwen2_5_VLForConditionalGeneration,
            "Qwen3VLForConditionalGeneration": lambda: transformers.Qwen3VLForConditionalGeneration,
            "Qwen3_5ForConditionalGeneration": lambda: transformers.Qwen3_5ForConditionalGeneration,
            "Idefics3ForConditionalGeneration": lambda: transformers.Idefics3ForConditionalGeneration,
            "LlavaForConditionalGeneration": lambda: transformers.LlavaForConditionalGeneration,
        }[name]()

    return load


@dataclass(frozen=True)
class VLMFamily:
    """How to talk to one VLM family.

    Args:
        name: registry key, e.g. "qwen2_vl".
        model_class: returns the transformers class (imported lazily).
        preprocessor: key of `zr_align.preprocess.PREPROCESSORS`.
        image_token: the token the processor expands once per image feature.
        image_prompt: how one image appears in the prompt, `{}` standing for the expanded image tokens.
        template: default `Rubric.template` for this family.
        extra_text_inputs: extra forward kwargs computed from `input_ids` (Qwen's `mm_token_type_ids`).
        prepare_model: called once on a loaded backbone (exact speed-ups such as batched vision attention).
    """

    name: str
    model_class: Callable[[], type]
    preprocessor: str
    image_token: str
    image_prompt: str
    template: str
    extra_text_inputs: Callable[[torch.Tensor, int], dict[str, torch.Tensor]] = _no_extra_inputs
    prepare_model: Callable = _keep_model

    def build_preprocessor(self, processor_config: dict, **options):
        return build_preprocessor(self.preprocessor, processor_config, image_token=self.image_token, **options)


def _qwen(name: str, cls: str, prepare_model: Callable = _keep_model) -> VLMFamily:
    return VLMFamily(
        name=name,
        model_class=_model_class(cls),
        preprocessor="qwen_vl",
        image_token="<|image_pad|>",
        image_prompt="<|vision_start|>{}<|vision_end|>",
        template=CHATML_TEMPLATE,
        extra_text_inputs=_qwen_mm_token_type_ids,
        prepare_model=prepare_model,
    )


FAMILIES: dict[str, VLMFamily] = {
    "qwen2_vl": _qwen("qwen2_vl", "Qwen2VLForConditionalGeneration", _qwen2_vl_fast_vision),
    "qwen2_5_vl": _qwen("qwen2_5_vl", "Qwen2_5_VLForConditionalGeneration"),
    "qwen3_vl": _qwen("qwen3_vl", "Qwen3VLForConditionalGeneration"),
    "qwen3_5": _qwen("qwen3_5", "Qwen3_5ForConditionalGeneration"),
    "idefics3": VLMFamily(
        name="idefics3",
        model_class=_model_class("Idefics3ForConditionalGeneration"),
        preprocessor="idefics3",
        image_token="<image>",
        image_prompt="{}",
        template=IDEFICS3_TEMPLATE,
    ),
    "llava": VLMFamily(
        name="llava",
        model_class=_model_class("LlavaForConditionalGeneration"),
        preprocessor="llava",
        image_token="<image>",
        image_prompt="{}",
        template=LLAVA_TEMPLATE,
    ),
}

# `config.model_type` of a checkpoint -> family, to infer the family of a plain HF folder.
MODEL_TYPES: dict[str, str] = {
    "qwen2_vl": "qwen2_vl",
    "qwen2_5_vl": "qwen2_5_vl",
    "qwen3_vl": "qwen3_vl",
    "qwen3_5": "qwen3_5",
    "idefics3": "idefics3",
    "smolvlm": "idefics3",
    "llava": "llava",
}


def get_family(name: str) -> VLMFamily:
    if name not in FAMILIES:
        raise ValueError(f"unknown VLM family {name!r}; supported: {', '.join(FAMILIES)}")
    return FAMILIES[name]
