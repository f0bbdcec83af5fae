"""A differentiable stand-in for TinyWorld's judge: the ceiling of reward fine-tuning, not a reward to ship.

`SoftJudge` reads what `judge.judge` reads, with every threshold replaced by a sigmoid so that its score has a
gradient in the pixels: it answers "how far would DRaFT carry the SFT model with a reward that reads like the
ground truth?" (`reward.kind: tinyworld_soft_judge` in `train_t2i.py`), which tells a weak reward model apart
from a fine-tuning method or generator that cannot do better. Training on it and judging with the judge is
training on the test's own scorer, so a figure it gives is a ceiling, never a result of the product.

Per image, against the prompt's attributes (judge rules in brackets):

- segmentation: each pixel's position `a` along the line background -> palette colour `k` and its residual from
  that line; a soft nearest-line label `softmax(-residual / 4)`, on-palette `sig((max(40, 0.35 |d|) - residual)
  / 4)`, and the object's soft mask `m = ramp(a; 0.15 .. 0.45) x on-palette` summed over the colours, plus
  off-palette pixels farther than 60 from the background [on-palette, alpha >= 0.3; off-palette |d| >= 60; the
  judge then keeps the largest connected component, the soft mask keeps every blob];
- colour: the share of the object's core (`m^4`-weighted) labelled the target colour, against 0.5 [majority
  label of the object's interior];
- position: the soft box centre (line occupancies of `m`, an 8-norm of each row and column) inside the target
  third on both axes [box centre's grid cell];
- size: the soft box side against 22.6 px [max(w, h) >= sqrt(16 * 32)];
- shape: (fill of the soft box, fill of its four corner patches of side 15%, narrower / wider of the mean widths
  of its top and bottom quarters), the nearest of the judge's prototypes as a softmax [the same three features];
- colour shift: the core colour's distance from its nearest palette line (softly), against 25, or the
  background's distance from gray, against 12 [the same two measurements].

`temperature` divides every decision above (colour share, position, size, shape, shift), not the segmentation: at
1 a check is as sharp as the judge's and has no gradient far from its threshold (an object a whole third away);
warmer, the reward pulls from farther, and an image just inside a threshold scores less than 1 on that check.
Agreement with the judge at 1 (share of images where a check's probability > 0.5 says what the judge says): 1.00
on every check of test renders, clean and with one wrong attribute; on 360 generator samples colour 0.98,
position 0.98, size 0.97, shape 0.90, colour shift 0.94.

Score: `alignment = 5 - (wrong attributes)`, `realism = 5 - 1.5 (colour shift)`, the overall the mean of those and
of aesthetics and plausibility, which it holds at 5 (blur, which the frozen VAE decides, and the rare clutter,
fragments and crops are left out): the same units as `judge.overall`.
"""

from __future__ import annotations

import torch

from ..rewards.output import RewardOutput
from .grammar import BACKGROUND, CANVAS, COLORS, POSITION_CELLS, parse_prompt
from .judge import (
    FOREGROUND_ALPHA,
    OFF_PALETTE_DISTANCE,
    PALETTE_NAMES,
    SHAPE_PROTOTYPES,
    SHIFT_BACKGROUND,
    SHIFT_CORE,
    SIZE_THRESHOLD,
)


def _soft_box(mask: torch.Tensor, axis: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Soft extent and centre of a `(B, H, W)` mask in [0, 1] along one axis (1 rows, 2 columns): each line's
    occupancy (its largest mask value, as an 8-norm clipped at 1, so that a faint rim adds little) summed, and the
    occupancy-weighted mean coordinate."""
    occupancy = torch.exp(torch.logsumexp(8 * mask.clamp_min(1e-6).log(), dim=3 - axis) / 8).clamp(max=1.0)
    coords = torch.arange(mask.shape[axis], dtype=mask.dtype, device=mask.device) + 0.5
    extent = occupancy.sum(-1)
    centre = (occupancy * coords).sum(-1) / extent.clamp_min(1e-3)
    return extent, centre


def _band(coords: torch.Tensor, start: torch.Tensor, end: torch.Tensor) -> torch.Tensor:
    """`(B, N)` soft indicator of `start <= coords < end` (pixel centres; a half-pixel ramp at both ends)."""
    return torch.sigmoid((coords - start[:, None]) / 0.5) * torch.sigmoid((end[:, None] - coords) / 0.5)


def _shape_features(mask, width, height, cx, cy) -> torch.Tensor:
    """`(B, 3)`: fill ratio, corner fill and taper of a `(B, H, W)` mask in its soft box (see `judge`)."""
    coords = torch.arange(mask.shape[-1], dtype=mask.dtype, device=mask.device) + 0.5
    x0, x1, y0, y1 = cx - width / 2, cx + width / 2, cy - height / 2, cy + height / 2
    fill = mask.sum((1, 2)) / (width * height).clamp_min(1.0)
    k = (0.15 * torch.minimum(width, height)).clamp_min(1.0)
    corners = []
    for rows in (_band(coords, y0, y0 + k), _band(coords, y1 - k, y1)):
        for cols in (_band(coords, x0, x0 + k), _band(coords, x1 - k, x1)):
            weight = rows[:, :, None] * cols[:, None, :]
            corners.append((mask * weight).sum((1, 2)) / weight.sum((1, 2)).clamp_min(1e-3))
    q = (height / 4).clamp_min(1.0)
    widths = mask.sum(2)  # (B, H): the mask's width in each row
    top, bottom = ((widths * band).sum(1) / band.sum(1).clamp_min(1e-3)
                   for band in (_band(coords, y0, y0 + q), _band(coords, y1 - q, y1)))
    taper = torch.minimum(top, bottom) / torch.maximum(top, bottom).clamp_min(1e-3)
    return torch.stack([fill, torch.stack(corners).mean(0), taper], dim=-1)


class SoftJudge:
    """Differentiable judge surrogate: `reward(images, prompts) -> RewardOutput` with `reward` the soft overall
    score (1-5 scale, the judge's `overall`); `images` `(B, 3, 64, 64)` in [0, 1]."""

    differentiable = True

    def __init__(self, temperature: float = 1.0):
        self.temperature = temperature
        self.palette = torch.tensor([COLORS[c] for c in PALETTE_NAMES], dtype=torch.float32)
        self.gray = torch.tensor(BACKGROUND, dtype=torch.float32)

    def attributes(self, images: torch.Tensor, prompts: list[str]) -> dict[str, torch.Tensor]:
        """Per image `(B,)` soft probabilities that colour, position, size and shape are right, and of a colour
        shift."""
        if images.dim() != 4 or tuple(images.shape[1:]) != (3, CANVAS, CANVAS):
            raise ValueError(f"SoftJudge reads (B, 3, {CANVAS}, {CANVAS}) images; got shape {tuple(images.shape)}")
        t = self.temperature
        wanted = [parse_prompt(p) for p in prompts]
        pixels = images.float().permute(0, 2, 3, 1) * 255.0  # (B, H, W, 3)
        background = pixels.flatten(1, 2).median(dim=1).values  # (B, 3)
        d = pixels - background[:, None, None]
        palette = self.palette.to(images.device)
        u = palette[None] - background[:, None]  # (B, K, 3)
        alpha = torch.einsum("bhwc,bkc->bhwk", d, u) / (u * u).sum(-1).clamp_min(1.0)[:, None, None]
        residual = (d[..., None, :] - alpha[..., None] * u[:, None, None]).norm(dim=-1)  # (B, H, W, K)
        distance = d.norm(dim=-1)
        on_palette = torch.sigmoid((torch.clamp(0.35 * distance, min=40.0)[..., None] - residual) / 4.0)
        label = torch.softmax(-residual / 4.0, dim=-1)  # the judge's nearest palette line, softly
        member = ((alpha - FOREGROUND_ALPHA) / 0.3 + 0.5).clamp(0, 1) * on_palette * label  # a ramp 0.3 wide
        off_palette = (1 - (on_palette * label).sum(-1)) * torch.sigmoid((distance - OFF_PALETTE_DISTANCE) / 5.0)
        mask = (member.sum(-1) + off_palette).clamp(0, 1)  # the object, whatever its colour  (B, H, W)
        target = torch.tensor([PALETTE_NAMES.index(w.color) for w in wanted], device=images.device)
        own = member.gather(-1, target[:, None, None, None].expand(*member.shape[:3], 1))[..., 0]
        interior = mask**4  # weights the object's core over its anti-aliased rim
        colour = torch.sigmoid(((own * interior).sum((1, 2)) / interior.sum((1, 2)).clamp_min(1e-3) - 0.5) / (0.1 * t))

        width, cx = _soft_box(mask, 2)
        height, cy = _soft_box(mask, 1)
        third = CANVAS / 3
        cells = torch.tensor([POSITION_CELLS[w.position] for w in wanted], dtype=images.dtype, device=images.device)

        def inside(value, cell):
            return torch.sigmoid((value - cell * third) / t) * torch.sigmoid(((cell + 1) * third - value) / t)

        position = inside(cy, cells[:, 0]) * inside(cx, cells[:, 1])
        side = torch.maximum(width, height)
        large = torch.sigmoid((side - SIZE_THRESHOLD) / (1.5 * t))
        size = torch.where(torch.tensor([w.size == "large" for w in wanted], device=images.device), large, 1 - large)
        features = _shape_features(mask, width, height, cx, cy)  # (B, 3)
        prototypes = torch.tensor(list(SHAPE_PROTOTYPES.values()), dtype=images.dtype, device=images.device)
        shape_probs = torch.softmax(-((features[:, None] - prototypes) ** 2).sum(-1) / (0.01 * t), dim=-1)
        shape_index = torch.tensor([list(SHAPE_PROTOTYPES).index(w.shape) for w in wanted], device=images.device)
        shape = shape_probs.gather(1, shape_index[:, None])[:, 0]

        core = (pixels * interior[..., None]).sum((1, 2)) / interior.sum((1, 2))[:, None].clamp_min(1e-3)
        gray = self.gray.to(images.device)
        lines = palette - gray  # (K, 3) the judge's lines: gray -> each palette colour
        offset = core - gray  # (B, 3)
        along = ((offset @ lines.T) / (lines * lines).sum(-1)).clamp(0, 1)  # (B, K)
        line_residual = (offset[:, None] - along[..., None] * lines).norm(dim=-1)  # (B, K)
        core_residual = (torch.softmax(-line_residual / 4.0, dim=-1) * line_residual).sum(-1)
        background_shift = (background - gray).norm(dim=-1)
        shift = 1 - (1 - torch.sigmoid((core_residual - SHIFT_CORE) / (3.0 * t))) * (
            1 - torch.sigmoid((background_shift - SHIFT_BACKGROUND) / (2.0 * t)))
        return {"color": colour, "position": position, "size": size, "shape": shape, "color_shift": shift}

    def __call__(self, images: torch.Tensor, prompts: list[str]) -> RewardOutput:
        soft = self.attributes(images, list(prompts))
        alignment = 5.0 - sum(1 - soft[a] for a in ("color", "position", "size", "shape"))
        realism = 5.0 - 1.5 * soft["color_shift"]
        return RewardOutput((alignment + realism + 10.0) / 4)
