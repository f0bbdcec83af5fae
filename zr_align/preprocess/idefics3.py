"""Torch preprocessing for the Idefics3 family (Idefics3, SmolVLM, SmolVLM2: `Idefics3ForConditionalGeneration`).

Reproduces `Idefics3ImageProcessor` (PIL backend) followed by the image-token expansion of `Idefics3Processor`:

1. resize so the longest edge is exactly `size["longest_edge"]` (aspect kept, the other side made even; up- or
   downscaling, capped at 4096), with the checkpoint's filter (LANCZOS by default);
2. with `do_image_splitting`: resize again so both sides are multiples of the tile size
   `S = max_image_size["longest_edge"]`, cut into `rows x cols` tiles of `S x S` (row-major) and append a global
   view (the whole image resized to `S x S`); an image already `S x S` is not split. Without splitting: one
   `S x S` image;
3. rescale, normalise; `pixel_values` `(B, N, 3, S, S)` with `N = rows * cols + 1` (or 1), and an all-ones
   `pixel_attention_mask` `(B, N, S, S)` (equal-size images need no padding);
4. the prompt text of one image: per tile `<fake_token_around_image><row_r_col_c>` + `<image>` * `image_seq_len`,
   a newline after each row, then `\\n<fake_token_around_image><global-img>` + `<image>` * `image_seq_len` +
   `<fake_token_around_image>` (only this last block for an unsplit image).

Every resize goes through a `uint8` Pillow image in the HF processor; `quantize=True` reproduces those roundings
(straight-through gradient) and matches the HF pixels exactly; otherwise the chain of resizes stays in floats
(measured: at most 1.74 8-bit levels, about 0.35 on average). (`pil_resize` follows Pillow's choice
of which pass runs first.)

Image-token budget. An image always costs `(rows * cols + 1) * image_seq_len` `<image>` tokens (the wrapper and
row/column tokens are not counted), and the grid is decided by the longest-edge target alone: with
`longest_edge = k * S` a square image gets a `k x k` grid (the most, `(k^2 + 1) * image_seq_len` tokens) and a very
elongated one a `1 x k` strip (the fewest, `(k + 1) * image_seq_len`); `k = 1` gives one unsplit tile
(`image_seq_len` tokens). `max_image_tokens` sets `longest_edge = k * S` with the largest `k` whose worst case
fits (`k <= 4096 // S`), so no image of any shape exceeds the budget: this may move the resolution above or below
the checkpoint's `size`. `min_image_tokens` raises `k` (never lowers it) to the smallest value whose best case
reaches it, so every image gets at least that many. A budget that no `k` satisfies is a `ValueError`; without
splitting an image always costs `image_seq_len` tokens and a budget is only checked against that.

`image_seq_len` is a *processor* setting (`processor_config.json` of a checkpoint, `(S / patch)^2 / scale^2` of
the model), not an image-processor one: it is read from the `image_seq_len` key of the config dict when present,
else HF's `Idefics3Processor` default (169, Idefics3-8B) is used.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .pixels import check_images, clamp_pixels, normalize
from .resample import PIL_CODES, pil_resize
from .vision_inputs import VisionInputs

IMAGENET_STANDARD_MEAN = (0.5, 0.5, 0.5)
IMAGENET_STANDARD_STD = (0.5, 0.5, 0.5)
MAX_IMAGE_SIZE = 4096  # the HF processor caps the longest edge here
DEFAULT_IMAGE_SEQ_LEN = 169  # `Idefics3Processor(image_seq_len=169)`

FAKE_IMAGE_TOKEN = "<fake_token_around_image>"
GLOBAL_IMAGE_TAG = "<global-img>"


def _rescale_to_max_len(height: int, width: int, max_len: int) -> tuple[int, int]:
    # `_resize_output_size_rescale_to_max_len` (min_len=1): longest edge to max_len, the other side made even.
    aspect_ratio = width / height
    if width >= height:
        width = max_len
        height = int(width / aspect_ratio)
        if height % 2 != 0:
            height += 1
    else:
        height = max_len
        width = int(height * aspect_ratio)
        if width % 2 != 0:
            width += 1
    return max(height, 1), max(width, 1)


def _scale_below_upper_bound(height: int, width: int, max_len: int = MAX_IMAGE_SIZE) -> tuple[int, int]:
    # `_resize_output_size_scale_below_upper_bound`
    aspect_ratio = width / height
    if width >= height and width > max_len:
        width = max_len
        height = int(width / aspect_ratio)
    elif height > width and height > max_len:
        height = max_len
        width = int(height * aspect_ratio)
    return max(height, 1), max(width, 1)


def _multiple_of_tile(height: int, width: int, tile: int) -> tuple[int, int]:
    # `resize_for_vision_encoder`: both sides up to multiples of the tile size (same float rounding as HF).
    aspect_ratio = width / height
    if width >= height:
        width = math.ceil(width / tile) * tile
        height = int(width / aspect_ratio)
        height = math.ceil(height / tile) * tile
    else:
        height = math.ceil(height / tile) * tile
        width = int(height * aspect_ratio)
        width = math.ceil(width / tile) * tile
    return height, width


@dataclass(frozen=True)
class Idefics3Layout:
    """The shape decisions for one input size: the resize targets, the tile grid, the number of images."""

    resized: tuple[int, int]  # after the longest-edge resize
    split: tuple[int, int]  # after the resize to tile multiples (== resized without splitting)
    rows: int  # 0 when the image is not split
    cols: int

    @property
    def num_images(self) -> int:
        return self.rows * self.cols + 1 if self.rows else 1


@dataclass
class Idefics3Preprocessor:
    """Differentiable `(B, 3, H, W)` in [0, 1] -> Idefics3 `pixel_values`, `pixel_attention_mask` and image text.

    Args:
        longest_edge: `size["longest_edge"]`, the longest-edge target of the first resize (the token budget).
        tile_size: `max_image_size["longest_edge"]`, the side of every tile (the vision encoder's image size).
        image_seq_len: `<image>` tokens per tile (`(tile / patch)^2 / scale_factor^2` of the model).
        do_resize, do_image_splitting, do_rescale, do_normalize, do_pad: as in the HF image processor.
        rescale_factor: multiplies the 0..255 pixel values (HF default 1/255).
        image_mean, image_std: normalisation statistics.
        resample: Pillow filter name ("lanczos" for every Idefics3 / SmolVLM checkpoint).
        clamp: "hard", "straight_through" or "none" (see `zr_align.preprocess.pixels`).
        quantize: round after every resize pass to 8-bit levels like the HF processor (straight-through gradient).
        image_token: the placeholder the LM sees once per image feature.
    """

    longest_edge: int = 4 * 364
    tile_size: int = 364
    image_seq_len: int = DEFAULT_IMAGE_SEQ_LEN
    do_resize: bool = True
    do_image_splitting: bool = True
    do_rescale: bool = True
    rescale_factor: float = 1 / 255
    do_normalize: bool = True
    do_pad: bool = True
    image_mean: tuple[float, ...] = IMAGENET_STANDARD_MEAN
    image_std: tuple[float, ...] = IMAGENET_STANDARD_STD
    resample: str = "lanczos"
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
    ) -> "Idefics3Preprocessor":
        """Build from an HF `preprocessor_config.json` dict; `*_image_tokens` set the longest edge (module doc)."""
        size = config.get("size") or {}
        tile = (config.get("max_image_size") or {}).get("longest_edge", 364)
        if size and "longest_edge" not in size:
            raise ValueError(f"Idefics3 image-processor config needs size['longest_edge'], got size={size}")
        resample = config.get("resample", 1)
        scalar = lambda v: (v,) * 3 if isinstance(v, (int, float)) else tuple(v)  # noqa: E731
        pre = cls(
            longest_edge=size.get("longest_edge", 4 * 364),
            tile_size=tile,
            image_seq_len=int(config.get("image_seq_len") or DEFAULT_IMAGE_SEQ_LEN),
            do_resize=config.get("do_resize", True),
            do_image_splitting=config.get("do_image_splitting", True),
            do_rescale=config.get("do_rescale", True),
            rescale_factor=config.get("rescale_factor", 1 / 255),
            do_normalize=config.get("do_normalize", True),
            do_pad=config.get("do_pad", True),
            image_mean=scalar(config.get("image_mean", IMAGENET_STANDARD_MEAN)),
            image_std=scalar(config.get("image_std", IMAGENET_STANDARD_STD)),
            resample=PIL_CODES[resample] if isinstance(resample, int) else resample,
            clamp=clamp,
            quantize=quantize,
            image_token=image_token,
        )
        return pre.with_token_budget(min_image_tokens, max_image_tokens)

    # ------------------------------------------------------------------ token budget
    def token_range(self, grid: int) -> tuple[int, int]:
        """Fewest and most `<image>` tokens over all aspect ratios when `longest_edge = grid * tile_size`."""
        if grid <= 1 or not self.do_image_splitting:
            return self.image_seq_len, self.image_seq_len
        return (grid + 1) * self.image_seq_len, (grid * grid + 1) * self.image_seq_len

    def with_token_budget(self, min_image_tokens: int | None, max_image_tokens: int | None) -> "Idefics3Preprocessor":
        """Set `longest_edge = k * tile_size` so every image costs between the two budgets (see module doc)."""
        if min_image_tokens is None and max_image_tokens is None:
            return self
        if not (self.do_resize and self.do_image_splitting):
            # One tile or an input-size-driven grid: the longest edge cannot set the cost.
            fixed = self.image_seq_len if not self.do_image_splitting else None
            if fixed is not None and (min_image_tokens or 0) <= fixed <= (max_image_tokens or fixed):
                return self
            raise ValueError(
                f"an image-token budget needs do_resize and do_image_splitting (an unsplit image costs "
                f"{self.image_seq_len} tokens); drop min/max_image_tokens or change the processor config"
            )
        max_grid = max(1, MAX_IMAGE_SIZE // self.tile_size)
        grid = math.ceil(self.longest_edge / self.tile_size)
        if max_image_tokens is not None:
            if self.token_range(1)[1] > max_image_tokens:
                raise ValueError(
                    f"max_image_tokens={max_image_tokens} is below one tile ({self.image_seq_len} image tokens); "
                    f"raise it to at least {self.image_seq_len}"
                )
            grid = 1
            while grid < max_grid and self.token_range(grid + 1)[1] <= max_image_tokens:
                grid += 1
        if min_image_tokens is not None:
            low = 1
            while low < max_grid and self.token_range(low)[0] < min_image_tokens:
                low += 1
            if self.token_range(low)[0] < min_image_tokens or (max_image_tokens is not None and low > grid):
                raise ValueError(
                    f"no Idefics3 tile grid gives every image between {min_image_tokens} and {max_image_tokens} "
                    f"image tokens ({self.image_seq_len} per tile, tile {self.tile_size}px); widen the budget"
                )
            grid = max(grid, low)
        self.longest_edge = grid * self.tile_size
        return self

    # ------------------------------------------------------------------ shapes
    def layout(self, height: int, width: int) -> Idefics3Layout:
        """The resize targets and tile grid the HF processor picks for an input of `height x width`."""
        if self.do_resize:
            height, width = _rescale_to_max_len(height, width, self.longest_edge)
            height, width = _scale_below_upper_bound(height, width)
        resized = (height, width)
        if not self.do_image_splitting:
            return Idefics3Layout(resized, resized, 0, 0)
        height, width = _multiple_of_tile(height, width, self.tile_size)
        tile = self.tile_size
        if height > tile or width > tile:
            # HF: (h - S) // S + 1 tiles per side; h and w are multiples of S here.
            return Idefics3Layout(resized, (height, width), (height - tile) // tile + 1, (width - tile) // tile + 1)
        return Idefics3Layout(resized, (height, width), 0, 0)

    def num_image_tokens(self, height: int, width: int) -> int:
        """`<image>` tokens (image features) of one `height x width` image."""
        return self.layout(height, width).num_images * self.image_seq_len

    def image_text(self, rows: int, cols: int) -> str:
        """What `Idefics3Processor.replace_image_token` puts in place of one `<image>`."""
        image = self.image_token * self.image_seq_len
        global_block = f"{FAKE_IMAGE_TOKEN}{GLOBAL_IMAGE_TAG}{image}{FAKE_IMAGE_TOKEN}"
        if rows == 0 and cols == 0:
            return global_block
        text = ""
        for r in range(rows):
            for c in range(cols):
                text += f"{FAKE_IMAGE_TOKEN}<row_{r + 1}_col_{c + 1}>{image}"
            text += "\n"
        return text + "\n" + global_block

    # ------------------------------------------------------------------ forward
    def __call__(self, images: torch.Tensor) -> VisionInputs:
        """`images` `(B, 3, H, W)` in [0, 1] -> `VisionInputs`. Differentiable w.r.t. `images`."""
        check_images(images, self.clamp)
        images = clamp_pixels(images, self.clamp)
        batch, channels = images.shape[:2]
        layout = self.layout(*images.shape[-2:])
        tile = self.tile_size
        if self.do_resize:
            images = pil_resize(images, layout.resized, self.resample, quantize=self.quantize)
        if not self.do_image_splitting:
            frames = pil_resize(images, (tile, tile), self.resample, quantize=self.quantize)
            frames = frames.unsqueeze(1)  # (B, 1, C, S, S)
        else:
            images = pil_resize(images, layout.split, self.resample, quantize=self.quantize)
            if layout.rows:
                rows, cols = layout.rows, layout.cols
                # (B, C, R*S, K*S) -> (B, R, K, C, S, S) -> (B, R*K, C, S, S): tiles in row-major order.
                tiles = images.reshape(batch, channels, rows, tile, cols, tile).permute(0, 2, 4, 1, 3, 5)
                tiles = tiles.reshape(batch, rows * cols, channels, tile, tile)
                global_view = pil_resize(images, (tile, tile), self.resample, quantize=self.quantize).unsqueeze(1)
                frames = torch.cat([tiles, global_view], dim=1)
            else:
                frames = images.unsqueeze(1)
        # Pixels are in [0, 1] = uint8 / 255; HF multiplies the uint8 values by `rescale_factor`.
        scale = self.rescale_factor * 255.0 if self.do_rescale else 255.0
        if scale != 1.0:
            frames = frames * scale
        num = frames.shape[1]
        frames = frames.flatten(0, 1)
        if self.do_normalize:
            frames = normalize(frames, self.image_mean, self.image_std)
        pixel_values = frames.reshape(batch, num, channels, *frames.shape[-2:])
        tensors = {"pixel_values": pixel_values}
        if self.do_pad:
            # Equal-size images need no padding: every pixel is real. Bool (HF: int64 ones), 8x smaller.
            tensors["pixel_attention_mask"] = torch.ones(
                batch, num, *pixel_values.shape[-2:], dtype=torch.bool, device=pixel_values.device
            )
        return VisionInputs(tensors=tensors, image_text=self.image_text(layout.rows, layout.cols))
