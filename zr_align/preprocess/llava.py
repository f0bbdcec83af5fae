"""Torch preprocessing for the LLaVA family (`LlavaForConditionalGeneration`: CLIP or SigLIP tower + causal LM).

A LLaVA checkpoint ships one of three stock image processors; all are reproduced here from the same config keys
the PIL processors of transformers 5.x read (`image_processing_pil_{clip,siglip,llava}.py`, `PilBackend`):

* `CLIPImageProcessor` (LLaVA-1.5): resize the shortest edge to `size["shortest_edge"]` keeping the aspect ratio
  (the long edge is `int(shortest * long / short)`, truncated), BICUBIC; center crop to `crop_size` (offsets
  `(H - h) // 2`, `(W - w) // 2`; zero padding when the image is smaller); rescale; normalise (CLIP statistics).
* `SiglipImageProcessor`: resize to a fixed `size = {"height", "width"}`, BICUBIC; rescale; normalise 0.5 / 0.5.
* `LlavaImageProcessor`: the CLIP pipeline, preceded, when `do_pad` is set, by padding to a square with the
  background colour `int(255 * image_mean)` (the image centred, offset `(max_side - side) // 2`).

Which steps run is read from the config (`image_processor_type` gives the class defaults for missing keys;
`size`, `crop_size`, `do_center_crop`, `do_pad`, ... override them), so a CLIP processor with `do_center_crop`
false, or any other mix of the keys, is reproduced as well.

The number of image tokens is what `LlavaProcessor` inserts: `(h // patch) * (w // patch) +
num_additional_image_tokens`, minus one for `vision_feature_select_strategy == "default"` (the CLS token is
dropped), where `(h, w)` is the size of the processed image. `patch_size`, `vision_feature_select_strategy` and
`num_additional_image_tokens` live in the processor / model config of a checkpoint, not in the image-processor
config: the tiny models of `zr_align.tiny` store them as extra keys of their `preprocessor_config.json`.
Without them the defaults describe the two stock towers: patch 14; CLIP-type processors "default" with one
extra (CLS) token, SigLIP-type "full" with none; either way one token per patch.

Token budget: unlike dynamic-resolution families, the vision tower fixes the number of image tokens (its
position embeddings are for one input size). `min_image_tokens` / `max_image_tokens` are therefore *checked*,
not applied: a `ValueError` is raised when the tower's token count falls outside them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .pixels import check_images, clamp_pixels, normalize
from .resample import PIL_CODES, pil_resize
from .vision_inputs import VisionInputs

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_STANDARD_MEAN = (0.5, 0.5, 0.5)
IMAGENET_STANDARD_STD = (0.5, 0.5, 0.5)

# Class defaults of the stock PIL processors (used for keys missing from a config).
_CLIP_DEFAULTS = {
    "size": {"shortest_edge": 224},
    "crop_size": {"height": 224, "width": 224},
    "do_center_crop": True,
    "image_mean": OPENAI_CLIP_MEAN,
    "image_std": OPENAI_CLIP_STD,
    "vision_feature_select_strategy": "default",
    "num_additional_image_tokens": 1,
}
_SIGLIP_DEFAULTS = {
    "size": {"height": 224, "width": 224},
    "crop_size": None,
    "do_center_crop": False,
    "image_mean": IMAGENET_STANDARD_MEAN,
    "image_std": IMAGENET_STANDARD_STD,
    "vision_feature_select_strategy": "full",
    "num_additional_image_tokens": 0,
}


def _processor_kind(config: dict) -> str:
    """"clip", "siglip" or "llava" (the stock class whose defaults and steps apply)."""
    name = str(config.get("image_processor_type") or "").lower()
    for kind in ("siglip", "llava", "clip"):
        if kind in name:
            return kind
    # No (known) class name: a crop means the CLIP pipeline, a fixed height/width the SigLIP one.
    size = config.get("size")
    if "crop_size" in config or config.get("do_center_crop"):
        return "clip"
    if isinstance(size, dict) and "height" in size and "width" in size:
        return "siglip"
    return "clip"


def _size_dict(size, default_to_square: bool) -> dict | None:
    """The size dict HF's `get_size_dict` makes of an int, a list or a dict (None stays None)."""
    if size is None:
        return None
    if isinstance(size, dict):
        return {k: v for k, v in size.items() if v is not None}
    if isinstance(size, int):
        return {"height": size, "width": size} if default_to_square else {"shortest_edge": size}
    if isinstance(size, (list, tuple)) and len(size) == 2:
        return {"height": int(size[0]), "width": int(size[1])}
    raise ValueError(f"cannot read image size {size!r}; use a dict such as {{'shortest_edge': 336}}")


def resize_output_size(height: int, width: int, size: dict) -> tuple[int, int]:
    """Target `(height, width)` of `PilBackend.resize` for the size dict `size` (same float arithmetic)."""
    if size.get("shortest_edge") and size.get("longest_edge"):
        # transformers.image_transforms.get_size_with_aspect_ratio
        target, max_size = size["shortest_edge"], size["longest_edge"]
        raw_size = None
        short, long = float(min(height, width)), float(max(height, width))
        if long / short * target > max_size:
            raw_size = max_size * short / long
            target = int(round(raw_size))
        if (height <= width and height == target) or (width <= height and width == target):
            return height, width
        if width < height:
            return (int(raw_size * height / width) if raw_size is not None else int(target * height / width)), target
        return target, (int(raw_size * width / height) if raw_size is not None else int(target * width / height))
    if size.get("shortest_edge"):
        # transformers.image_transforms.get_resize_output_image_size(default_to_square=False)
        short, long = (width, height) if width <= height else (height, width)
        new_short, new_long = size["shortest_edge"], int(size["shortest_edge"] * long / short)
        return (new_long, new_short) if width <= height else (new_short, new_long)
    if size.get("max_height") and size.get("max_width"):
        scale = min(size["max_height"] / height, size["max_width"] / width)
        return int(height * scale), int(width * scale)
    if size.get("height") and size.get("width"):
        return int(size["height"]), int(size["width"])
    raise ValueError(f"size {size} needs 'shortest_edge', 'height' and 'width', or 'max_height' and 'max_width'")


def center_crop(images: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """`transformers.image_transforms.center_crop`: offsets `(H - h) // 2`; zero padding if the image is smaller."""
    in_h, in_w = images.shape[-2:]
    top, left = (in_h - height) // 2, (in_w - width) // 2
    if top >= 0 and left >= 0 and top + height <= in_h and left + width <= in_w:
        return images[..., top : top + height, left : left + width]
    new_h, new_w = max(height, in_h), max(width, in_w)
    top_pad, left_pad = math.ceil((new_h - in_h) / 2), math.ceil((new_w - in_w) / 2)
    padded = F.pad(images, (left_pad, new_w - in_w - left_pad, top_pad, new_h - in_h - top_pad))
    top, left = top + top_pad, left + left_pad
    return padded[..., max(0, top) : min(new_h, top + height), max(0, left) : min(new_w, left + width)]


def pad_square(images: torch.Tensor, background: tuple[float, ...]) -> torch.Tensor:
    """`LlavaImageProcessor.pad_to_square`: centre the image on a square of colour `background` (in [0, 1])."""
    batch, channels, height, width = images.shape
    if height == width:
        return images
    side = max(height, width)
    colour = torch.as_tensor(background, dtype=images.dtype, device=images.device)
    canvas = colour.view(1, -1, 1, 1).expand(batch, channels, side, side)
    if width > height:
        start = (side - height) // 2
        parts = [canvas[:, :, :start], images, canvas[:, :, start + height :]]
        return torch.cat(parts, dim=2)
    start = (side - width) // 2
    return torch.cat([canvas[..., :start], images, canvas[..., start + width :]], dim=3)


@dataclass
class LlavaPreprocessor:
    """Differentiable `(B, 3, H, W)` in [0, 1] -> LLaVA `pixel_values` `(B, 3, h, w)` and its image text.

    Args:
        size: HF size dict of the resize (`shortest_edge` [+ `longest_edge`], or `height`/`width`, or
            `max_height`/`max_width`).
        crop_size: `(height, width)` of the center crop, or None for no crop.
        pad_to_square: pad to a square with `background` before resizing (`LlavaImageProcessor.do_pad`).
        background: the padding colour in [0, 1] (`int(255 * image_mean) / 255`).
        pad_size: `(height, width)` to zero-pad the normalised image to at the bottom/right (`PilBackend.do_pad`
            with a `pad_size`, CLIP/SigLIP processors), or None.
        patch_size, vision_feature_select_strategy, num_additional_image_tokens: as `LlavaProcessor` uses them
            to count image tokens.
        min_image_tokens, max_image_tokens: checked against the tower's token count (not applied; see module doc).
        clamp: "hard", "straight_through" or "none" (see `zr_align.preprocess.pixels`).
        quantize: reproduce the HF processor's 8-bit rounding after each resize pass (straight-through gradient).
        image_token: the placeholder token the LM sees once per image feature.
    """

    size: dict = field(default_factory=lambda: {"shortest_edge": 224})
    crop_size: tuple[int, int] | None = (224, 224)
    do_resize: bool = True
    pad_to_square: bool = False
    background: tuple[float, ...] = (0.0, 0.0, 0.0)
    pad_size: tuple[int, int] | None = None
    resample: str = "bicubic"
    scale: float = 1.0  # rescale_factor * 255: pixel value (uint8 units times rescale_factor) per unit of input
    do_normalize: bool = True
    image_mean: tuple[float, ...] = OPENAI_CLIP_MEAN
    image_std: tuple[float, ...] = OPENAI_CLIP_STD
    patch_size: int = 14
    vision_feature_select_strategy: str = "default"
    num_additional_image_tokens: int = 1
    min_image_tokens: int | None = None
    max_image_tokens: int | None = None
    clamp: str = "straight_through"
    quantize: bool = False
    image_token: str = "<image>"

    @classmethod
    def from_processor_config(
        cls,
        config: dict,
        clamp: str = "straight_through",
        min_image_tokens: int | None = None,
        max_image_tokens: int | None = None,
        image_token: str = "<image>",
        quantize: bool = False,
    ) -> "LlavaPreprocessor":
        """Build from an HF `preprocessor_config.json` dict (CLIP, SigLIP or LLaVA image processor).

        Extra keys `patch_size`, `vision_feature_select_strategy`, `num_additional_image_tokens` (from the
        checkpoint's processor / model config) set the image-token count; see the module docstring for defaults.
        """
        kind = _processor_kind(config)
        defaults = _SIGLIP_DEFAULTS if kind == "siglip" else _CLIP_DEFAULTS

        def get(key):
            value = config.get(key)
            return defaults.get(key) if value is None else value

        square = bool(config.get("default_to_square", False))
        size = _size_dict(get("size"), square)
        do_crop = bool(get("do_center_crop"))
        crop = _size_dict(get("crop_size"), True) if do_crop else None
        if do_crop and not (crop and crop.get("height") and crop.get("width")):
            raise ValueError(f"do_center_crop needs crop_size with 'height' and 'width', got {config.get('crop_size')}")
        mean, std = get("image_mean"), get("image_std")
        mean = tuple(float(m) for m in mean) if isinstance(mean, (list, tuple)) else (float(mean),) * 3
        std = tuple(float(s) for s in std) if isinstance(std, (list, tuple)) else (float(std),) * 3
        do_pad = bool(config.get("do_pad", False))
        # LlavaImageProcessor pads to a square before resizing; the CLIP/SigLIP PilBackend pads the processed
        # image at the bottom/right to `pad_size` (without one, to the batch's largest image: a no-op here).
        square_pad = do_pad and kind == "llava"
        pad_size = None
        if do_pad and kind != "llava" and config.get("pad_size") is not None:
            ps = _size_dict(config["pad_size"], True)
            pad_size = (int(ps["height"]), int(ps["width"]))
        background = tuple(int(m * 255) / 255.0 for m in mean)  # uint8 colour, as the processor pads uint8
        do_rescale = config.get("do_rescale", True)
        rescale_factor = config.get("rescale_factor", 1 / 255)
        strategy = config.get("vision_feature_select_strategy") or defaults["vision_feature_select_strategy"]
        extra = config.get("num_additional_image_tokens")
        if extra is None:
            extra = 1 if strategy == "default" else 0  # "default" drops a CLS token the tower must then have
        resample = config.get("resample", 3)
        return cls(
            size=size,
            crop_size=(int(crop["height"]), int(crop["width"])) if crop else None,
            do_resize=bool(config.get("do_resize", True)),
            pad_to_square=square_pad,
            background=background,
            pad_size=pad_size,
            resample=PIL_CODES[resample] if isinstance(resample, int) else resample,
            scale=rescale_factor * 255.0 if do_rescale else 255.0,
            do_normalize=bool(config.get("do_normalize", True)),
            image_mean=mean,
            image_std=std,
            patch_size=int(config.get("patch_size") or 14),
            vision_feature_select_strategy=strategy,
            num_additional_image_tokens=int(extra),
            min_image_tokens=min_image_tokens,
            max_image_tokens=max_image_tokens,
            clamp=clamp,
            quantize=quantize,
            image_token=image_token,
        )

    def __post_init__(self):
        if self.vision_feature_select_strategy not in ("default", "full"):
            strategy = self.vision_feature_select_strategy
            raise ValueError(f"vision_feature_select_strategy must be 'default' or 'full', got {strategy!r}")
        if self.min_image_tokens is not None and self.max_image_tokens is not None:
            if self.min_image_tokens > self.max_image_tokens:
                raise ValueError(
                    f"min_image_tokens {self.min_image_tokens} exceeds max_image_tokens {self.max_image_tokens}"
                )
        fixed = self.fixed_output_size()
        if fixed is not None:
            self.num_image_tokens(*fixed)  # a fixed token count: check the budget now, not at the first call

    # ------------------------------------------------------------------ sizes
    def fixed_output_size(self) -> tuple[int, int] | None:
        """`(h, w)` of every processed image when it does not depend on the input size (crop or fixed resize)."""
        if self.crop_size is not None:
            height, width = self.crop_size
        elif self.do_resize and self.size.get("height") and self.size.get("width"):
            height, width = int(self.size["height"]), int(self.size["width"])
        else:
            return None
        if self.pad_size is not None:
            height, width = max(height, self.pad_size[0]), max(width, self.pad_size[1])
        return height, width

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """`(h, w)` of the processed image for an input of `(height, width)`."""
        if self.pad_to_square:
            height = width = max(height, width)
        if self.do_resize:
            height, width = resize_output_size(height, width, self.size)
        if self.crop_size is not None:
            height, width = self.crop_size
        if self.pad_size is not None:
            height, width = max(height, self.pad_size[0]), max(width, self.pad_size[1])
        return height, width

    def num_image_tokens(self, height: int, width: int) -> int:
        """Image tokens `LlavaProcessor` inserts for a processed image of `(height, width)`; checks the budget."""
        p = self.patch_size
        n = (height // p) * (width // p) + self.num_additional_image_tokens
        if self.vision_feature_select_strategy == "default":
            n -= 1
        if self.max_image_tokens is not None and n > self.max_image_tokens:
            raise ValueError(
                f"the LLaVA vision tower gives {n} image tokens, more than max_image_tokens={self.max_image_tokens}; "
                "its token count is fixed by the tower, so raise max_image_tokens (or unset it)"
            )
        if self.min_image_tokens is not None and n < self.min_image_tokens:
            raise ValueError(
                f"the LLaVA vision tower gives {n} image tokens, fewer than min_image_tokens={self.min_image_tokens}; "
                "its token count is fixed by the tower, so lower min_image_tokens (or unset it)"
            )
        return n

    # ------------------------------------------------------------------ forward
    def __call__(self, images: torch.Tensor) -> VisionInputs:
        """`images` `(B, 3, H, W)` in [0, 1] -> `VisionInputs`. Differentiable w.r.t. `images`."""
        check_images(images, self.clamp)
        images = clamp_pixels(images, self.clamp)
        if self.pad_to_square:
            images = pad_square(images, self.background)
        if self.do_resize:
            target = resize_output_size(*images.shape[-2:], self.size)
            images = pil_resize(images, target, self.resample, quantize=self.quantize)
        if self.crop_size is not None:
            images = center_crop(images, *self.crop_size)
        if self.scale != 1.0:
            images = images * self.scale
        if self.do_normalize:
            images = normalize(images, self.image_mean, self.image_std)
        if self.pad_size is not None:
            h, w = images.shape[-2:]
            images = F.pad(images, (0, max(0, self.pad_size[1] - w), 0, max(0, self.pad_size[0] - h)))
        n = self.num_image_tokens(*images.shape[-2:])
        return VisionInputs(tensors={"pixel_values": images}, image_text=self.image_token * n)
