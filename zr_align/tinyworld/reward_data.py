"""TinyWorld reward-model data: rated images and preference pairs for training and evaluating rewards (README: "TinyWorld: the embedded default").

[`make_reward_data`] writes, for the prompts of one split, into `out_dir`:

- `images/PPPP_JJ.png`: `images_per_prompt` images per prompt: clean renders, renders with a corruption of
  `corrupt.CORRUPTIONS` (all kinds in turn; a share get a second corruption of another dimension, so severities
  are graded) and, with `sft_model`, samples of that diffusion model, so a reward model also sees real
  generator artefacts;
- `rated.jsonl`: one line per image with the simulated panel's `ratings` per dimension, a `rationale` per
  dimension (see [`rationale_text`]), `source` and `split` (format: `zr_align.reward_training.data`);
- `pairs.jsonl`: `pairs_per_prompt` pairs of images of the same prompt with the panel's preference ("a", "b" or
  "tie"), its margin and the per-dimension mean ratings of both images;
- `stats.json`: counts (images by source, preferences, tie rate) and the ground-truth judge's own pairwise
  accuracy against the panel on the non-tie pairs (the ceiling a reward model can hope to reach).

Every random choice comes from generators seeded by `(seed, split, prompt)`, so the same arguments give
byte-identical files. Prompts come from `grammar.split_prompts(split_seed)`: train, validation and test prompts
are disjoint, and the held-out evaluation pairs are those of the test split.

Rationales: each rated image carries the judge's check list per rubric dimension (format:
[`rationale.rationale_text`]).
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .annotators import AnnotatorPanel, Ratings
from .corrupt import CORRUPTIONS, WIDE_SEVERITIES, WRONG_ATTRIBUTE, combine_order, corrupt
from .grammar import (
    ATTRIBUTES,
    VALUES,
    Attributes,
    parse_prompt,
    split_prompts,
)
from .judge import judge
from .rationale import RATIONALE_DIMENSIONS, rationale_text
from .render import Rendered, draw, render
from .render import free_look as draw_look
from .render import free_layout as render_free_layout
from .sample import decode_roundtrip, generate, load_pipeline

SPLITS: tuple[str, ...] = ("train", "validation", "test")
RECIPES: tuple[str, ...] = ("mixed", "perception")
# The "perception" recipe: each artefact is drawn independently with this probability (from `WIDE_SEVERITIES`):
# blur, noise and colour casts often, the scene-level artefacts sometimes.
# The shipped reward models were trained on this mix. `object_cast` (the object's own colour off its palette line,
# the form of colour shift a generator makes) is not in it: adding it at 0.2 made the student read generator colour
# shift better (AUC 0.80 -> 0.90) but did not make fine-tuning better (docs/tinyworld_demo_validation.md, session 10).
ARTEFACT_RATES: dict[str, float] = {"blur": 0.25, "noise": 0.25, "color_shift": 0.2, "crop": 0.1, "fragments": 0.1,
                                    "low_contrast": 0.12, "clutter": 0.12}

def _image_plan(images_per_prompt: int, sft_fraction: float, with_sft: bool, recipe: str) -> tuple[int, int, int]:
    """(clean, corrupted, sft) images per prompt: "mixed", about a third of the non-SFT images clean, at least one;
    "perception", none clean (its images draw their own defects, none at times)."""
    n_sft = min(round(sft_fraction * images_per_prompt), images_per_prompt - 1) if with_sft else 0
    if recipe == "perception":
        return 0, images_per_prompt - n_sft, n_sft
    n_clean = max(1, round((images_per_prompt - n_sft) / 3))
    return n_clean, images_per_prompt - n_sft - n_clean, n_sft


def _corrupt_kinds(first: str, rng: np.random.Generator, double_fraction: float) -> list[str]:
    """`first`, plus with probability `double_fraction` a kind of another dimension; re-drawing kinds first."""
    kinds = [first]
    if rng.random() < double_fraction:
        others = [k for k, c in CORRUPTIONS.items() if c.dimension != CORRUPTIONS[first].dimension]
        kinds.append(others[rng.integers(len(others))])
    return combine_order(kinds)


def _wrong_attributes(prompt: str, num_wrong: int, rng: np.random.Generator) -> Attributes:
    """The prompt's attributes with `num_wrong` of them (chosen at random) replaced by another value."""
    shown = parse_prompt(prompt).as_dict()
    for attribute in rng.choice(ATTRIBUTES, num_wrong, replace=False):
        others = [v for v in VALUES[attribute] if v != shown[attribute]]
        shown[attribute] = others[rng.integers(len(others))]
    return Attributes(**shown)


def perception_image(prompt: str, rng: np.random.Generator, artefact_rates: dict[str, float] | None = None,
                     free_layout: float = 0.0, free_look: float = 0.0) -> tuple[np.ndarray, str]:
    """One image of the "perception" recipe and its source tag: 0-4 wrong attributes drawn uniformly, then each
    artefact of `artefact_rates` (corruption kind -> probability; default `ARTEFACT_RATES`) independently at a
    strength from `WIDE_SEVERITIES` (re-drawing kinds first). With probability `free_layout` the object is drawn
    at any size and place (`render.free_layout`; tag `+free`), and such an object with probability `free_look` in
    a colour between two of the palette's or with rounded corners (`render.free_look`; tag `+look`): its
    attributes are then whatever the judge reads (corners, cell borders; "other", a shifted colour, a rounded
    square read as a circle), as in a generator's samples. At 0 no random number is spent on it.

    Why: a reward model must *read* the image. With mostly clean renders of the prompt, "copy the prompt and say
    yes" is nearly optimal; with the number of wrong attributes uniform, "yes" and "no" are equally common and
    only reading the pixels pays (issue "Reward models that see").
    """
    num_wrong = int(rng.integers(0, len(ATTRIBUTES) + 1))
    shown = _wrong_attributes(prompt, num_wrong, rng)
    free = free_layout > 0 and rng.random() < free_layout
    look = free and free_look > 0 and rng.random() < free_look
    if free:
        scene = render_free_layout(shown, rng)
        picture = Rendered(draw(scene, look=draw_look(shown.color, rng) if look else None), scene)
    else:
        picture = render(shown, seed=rng)
    rates = ARTEFACT_RATES if artefact_rates is None else artefact_rates
    kinds = combine_order([kind for kind, rate in rates.items() if rng.random() < rate])
    for kind in kinds:
        done = corrupt(picture, kind, rng, severity=WIDE_SEVERITIES[kind])
        picture = Rendered(done.image, done.scene)
    return picture.image, f"wrong{num_wrong}" + "+free" * free + "+look" * look + "".join(f"+{k}" for k in kinds)


def make_reward_data(
    out_dir,
    split: str,
    images_per_prompt: int,
    seed: int,
    sft_model: str | None = None,
    sft_fraction: float = 0.3,
    *,
    recipe: str = "mixed",
    num_prompts: int | None = None,
    pairs_per_prompt: int | None = None,
    double_fraction: float = 0.25,
    split_seed: int = 0,
    sample_steps: int = 20,
    panel: AnnotatorPanel | None = None,
    artefact_rates: dict[str, float] | None = None,
    free_layout: float = 0.0,
    free_look: float = 0.0,
    sft_swap: float = 0.0,
    decoder_roundtrip: float = 0.0,
    raw_artefacts: tuple[str, ...] = (),
) -> dict:
    """Generate rated images and preference pairs for the prompts of one split (files: see the module docstring).

    Args:
        out_dir: output folder (created); existing files of the same names are overwritten.
        split (`str`): "train", "validation" or "test" of `split_prompts(split_seed)`.
        images_per_prompt (`int`): images per prompt (>= 2). Cost: the judge reads each image (~10 ms).
        seed (`int`): seeds layouts, corruptions, ratings, pair choice, the panel's raters and the SFT noise.
        sft_model (`str`, *optional*): a TinyWorld diffusion pipeline folder (e.g. `models/tinyworld/sft`); its
            samples make up `sft_fraction` of each prompt's images. Cost: one sampling run of all of them.
        sft_fraction (`float`, *optional*, defaults to 0.3): share of SFT samples per prompt (rounded).
        recipe (`str`, *optional*, defaults to "mixed"): how the non-SFT images are made. "mixed": a third clean
            renders, the rest one corruption of `CORRUPTIONS` each (all kinds in turn), some a second one.
            "perception": every image from [`perception_image`] (0-4 wrong attributes uniformly, independent
            artefacts over wide severities): the recipe that teaches a reward model to read the image.
        num_prompts (`int`, *optional*): use a seeded subset of this many prompts of the split (all by default).
        pairs_per_prompt (`int`, *optional*): pairs per prompt, drawn without replacement among all image pairs
            of the prompt; default `images_per_prompt` (capped at the number of pairs).
        double_fraction (`float`, *optional*, defaults to 0.25): share of corrupted images that get a second
            corruption of another dimension.
        split_seed (`int`, *optional*, defaults to 0): seed of `split_prompts`, apart from `seed` so that no seed
            moves a held-out prompt into training (0: the split the TinyWorld SFT model was trained on).
        sample_steps (`int`, *optional*, defaults to 20): denoising steps of the SFT samples.
        panel ([`AnnotatorPanel`], *optional*): the raters; default `AnnotatorPanel(seed=seed)`.
        artefact_rates (`dict[str, float]`, *optional*): the "perception" recipe's artefact probabilities;
            default `ARTEFACT_RATES`.
        free_layout, free_look (`float`, *optional*, default to 0): the "perception" recipe's [`perception_image`].
        sft_swap (`float`, *optional*, defaults to 0): share of the SFT samples drawn from a prompt of the split one
            attribute away from the rated one ([`_sft_prompts`]; source `sft_sample+swap`).
        decoder_roundtrip (`float`, *optional*, defaults to 0): share of the drawn images passed through `sft_model`'s
            VAE before they are judged ([`_roundtrip`]; tag `+decoded`): the generator's decoder look on them.
        raw_artefacts (`tuple[str]`, *optional*): artefact kinds whose images skip it ([`_roundtrip`]), e.g. ("blur",).

    Returns:
        `dict`: the contents of `stats.json`.

    Raises:
        `ValueError`: for an unknown split or out-of-range counts and fractions, or a roundtrip without a model.
    """
    _check_arguments(split, recipe, images_per_prompt, sft_fraction, double_fraction, artefact_rates, free_layout,
                     free_look, sft_swap, decoder_roundtrip, sft_model is not None, raw_artefacts)
    prompts = _choose_prompts(split, split_seed, num_prompts, seed)
    pairs_per_prompt = _pairs_per_prompt(images_per_prompt, pairs_per_prompt)
    panel = panel or AnnotatorPanel(seed=seed)
    plan = _image_plan(images_per_prompt, sft_fraction, sft_model is not None, recipe)
    pipe = load_pipeline(sft_model) if plan[2] or decoder_roundtrip else None  # its samples and its VAE
    sft = _sft_samples(pipe, prompts, plan[2], seed, sample_steps, sft_swap)  # (image, source), prompt-major
    look = {"artefact_rates": artefact_rates, "free_layout": free_layout, "free_look": free_look}
    tally = _draw_split(Path(out_dir), split, prompts, seed, plan, sft, (pipe, decoder_roundtrip, raw_artefacts), panel,
                        pairs_per_prompt, recipe=recipe, double_fraction=double_fraction, perception=look)
    options = {"free_layout": free_layout, "free_look": free_look, "sft_swap": sft_swap,
               "decoder_roundtrip": decoder_roundtrip, "raw_artefacts": list(raw_artefacts)}  # recorded when used
    stats = _stats(tally, panel, split=split, recipe=recipe, seed=seed, split_seed=split_seed, sft_model=sft_model,
                   prompts=len(prompts), images_per_prompt=images_per_prompt, pairs_per_prompt=pairs_per_prompt,
                   **{k: v for k, v in options.items() if v})
    _write_files(Path(out_dir), tally, stats)
    return stats


def _draw_split(out_dir: Path, split: str, prompts: list[str], seed: int, plan: tuple[int, int, int], sft: list,
                roundtrip: tuple, panel: AnnotatorPanel, pairs_per_prompt: int, *, recipe: str,
                double_fraction: float, perception: dict) -> "_Tally":
    """Draw, judge, rate and pair every prompt's images: `plan` (clean, drawn, sampled per prompt), the
    generator's samples `sft` appended; `roundtrip` (pipeline, share, raw kinds): the share of drawn images decoded
    by its VAE but for those with an artefact of the raw kinds ([`_roundtrip`], with its own random stream)."""
    (pipe, share, raw), (n_clean, n_corrupt, n_sft) = roundtrip, plan
    split_id = SPLITS.index(split)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    kinds, tally = _KindCycle.seeded(seed, split_id), _Tally()
    for p, prompt in enumerate(prompts):
        rng = np.random.default_rng([seed, split_id, p])
        images = _prompt_images(prompt, rng, n_clean, n_corrupt, recipe, kinds, double_fraction, perception)
        if share:
            images = _roundtrip(images, pipe, share, [seed, _ROUNDTRIP_STREAM, split_id, p], raw)
        images += sft[p * n_sft:(p + 1) * n_sft]
        names, ratings, overall = _rate_images(images, prompt, p, split, panel, rng, out_dir, tally)
        _draw_pairs(prompt, names, ratings, overall, pairs_per_prompt, panel, rng, tally)
    return tally


def _prompt_images(prompt: str, rng: np.random.Generator, n_clean: int, n_corrupt: int, recipe: str,
                   kinds: "_KindCycle", double_fraction: float, perception: dict) -> list[tuple[np.ndarray, str]]:
    """One prompt's drawn images and their sources: `n_clean` clean renders, then `n_corrupt` of the recipe
    (`perception`: [`perception_image`]'s keywords)."""
    images = [(render(prompt, seed=rng).image, "render") for _ in range(n_clean)]
    if recipe == "perception":
        return images + [perception_image(prompt, rng, **perception) for _ in range(n_corrupt)]
    return images + [_mixed_image(prompt, kinds.next(), rng, double_fraction) for _ in range(n_corrupt)]


def _write_files(out_dir: Path, tally: _Tally, stats: dict) -> None:
    """`rated.jsonl`, `pairs.jsonl` and `stats.json` (see the module docstring)."""
    for file, lines in (("rated.jsonl", tally.rated), ("pairs.jsonl", tally.pairs)):
        (out_dir / file).write_text("".join(json.dumps(line) + "\n" for line in lines))
    (out_dir / "stats.json").write_text(json.dumps(stats, indent=2) + "\n")


def _pairs_per_prompt(images_per_prompt: int, pairs_per_prompt: int | None) -> int:
    max_pairs = images_per_prompt * (images_per_prompt - 1) // 2
    pairs = min(images_per_prompt if pairs_per_prompt is None else pairs_per_prompt, max_pairs)
    if pairs < 1:
        raise ValueError(f"pairs_per_prompt must be >= 1, got {pairs}")
    return pairs


# The random streams of `_sft_prompts` and `_roundtrip`, apart from every prompt's stream `(seed, split, prompt index)`.
_SWAP_STREAM = 1_000_000
_ROUNDTRIP_STREAM = 1_000_001


def _sft_prompts(prompts: list[str], n_sft: int, seed: int, swap: float) -> list[str]:
    """The prompt each SFT sample is drawn from, `n_sft` per rated prompt (prompt-major): the rated prompt itself,
    or with probability `swap` a prompt of `prompts` that differs from it in exactly one attribute (uniformly among
    those). A teacher trained on such samples cannot copy the prompt on the generator's images, where the prompt is
    usually right (docs/tinyworld_rewards.md, session 19: "... samples of a neighbouring prompt"). At `swap=0` no random
    number is drawn, so the samples are those of a build without the option."""
    if not swap:
        return [p for p in prompts for _ in range(n_sft)]
    rng = np.random.default_rng([seed, _SWAP_STREAM])
    parsed = {p: parse_prompt(p) for p in prompts}
    out = []
    for p in prompts:
        near = [q for q in prompts if sum(getattr(parsed[p], a) != getattr(parsed[q], a) for a in ATTRIBUTES) == 1]
        for _ in range(n_sft):
            out.append(near[rng.integers(len(near))] if near and rng.random() < swap else p)
    return out


def _roundtrip(images: list[tuple[np.ndarray, str]], pipe, share: float, stream: list[int],
               raw: tuple[str, ...] = ()):
    """`images` (image, source) with each passed through `pipe`'s VAE with probability `share` (source `+decoded`),
    the coins drawn from their own `stream`, one per image (so the other images are a build's without it); an image
    with an artefact of `raw` (`+kind` in its source) stays as drawn whatever its coin: the decoder sharpens a
    blurred render, so the judge would call it sharp and a reader learn that soft is sharp (docs/tinyworld_rewards.md,
    sessions 27-28)."""
    rng = np.random.default_rng(stream)
    coins = rng.random(len(images)) if images else []
    chosen = [i for i, coin in enumerate(coins)
              if coin < share and not set(images[i][1].split("+")) & set(raw)]
    if not chosen:
        return images
    decoded = decode_roundtrip(pipe, np.stack([images[i][0] for i in chosen]))
    out = list(images)
    for i, image in zip(chosen, decoded):
        out[i] = (image, images[i][1] + "+decoded")
    return out


def _sft_samples(pipe, prompts: list[str], n_sft: int, seed: int, steps: int,
                 swap: float = 0.0) -> list[tuple[np.ndarray, str]]:
    """`n_sft` samples per prompt of the TinyWorld pipeline `pipe` (prompt-major), each with its source:
    "sft_sample", or "sft_sample+swap" when drawn from another prompt ([`_sft_prompts`])."""
    if not n_sft:
        return []
    drawn = _sft_prompts(prompts, n_sft, seed, swap)
    images = generate(pipe, drawn, seed=seed, steps=steps)
    return [(image, "sft_sample" if drawn[i] == prompts[i // n_sft] else "sft_sample+swap")
            for i, image in enumerate(images)]


def _check_arguments(split: str, recipe: str, images_per_prompt: int, sft_fraction: float,
                     double_fraction: float, artefact_rates: dict[str, float] | None, free_layout: float,
                     free_look: float, sft_swap: float = 0.0, decoder_roundtrip: float = 0.0,
                     has_model: bool = True, raw_artefacts: tuple[str, ...] = ()) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; allowed: {', '.join(SPLITS)}")
    if recipe not in RECIPES:
        raise ValueError(f"unknown recipe {recipe!r}; allowed: {', '.join(RECIPES)}")
    if images_per_prompt < 2:
        raise ValueError(f"images_per_prompt must be >= 2 (pairs need two images), got {images_per_prompt}")
    if not 0.0 <= double_fraction <= 1.0:
        raise ValueError(f"double_fraction must be in [0, 1], got {double_fraction}")
    check_mix(sft_fraction, artefact_rates, free_layout, free_look, sft_swap, decoder_roundtrip, has_model,
              raw_artefacts=raw_artefacts)


def check_mix(sft_fraction: float, artefact_rates: dict[str, float] | None = None, free_layout: float = 0.0,
              free_look: float = 0.0, sft_swap: float = 0.0, decoder_roundtrip: float = 0.0,
              has_model: bool = True, *, raw_artefacts: tuple[str, ...] = ()) -> None:
    """Refuse a training-data mix of `make_reward_data` that it cannot draw (one line naming the value and a fix);
    callers that work for a while before drawing it (`recipes.build_rewards`) check first.

    Raises:
        `ValueError`: a share outside its range, or an artefact rate for a kind that is no artefact.
    """
    if not 0.0 <= sft_fraction < 1.0:
        raise ValueError(f"sft_fraction must be in [0, 1), got {sft_fraction}; e.g. 0.12 (the shipped share)")
    for name, rate in (("free_layout", free_layout), ("free_look", free_look), ("sft_swap", sft_swap),
                       ("decoder_roundtrip", decoder_roundtrip)):
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {rate}; e.g. 0.3")
    if decoder_roundtrip and not has_model:
        raise ValueError("decoder_roundtrip needs the SFT model's VAE (sft_model, --sft-model: a diffusers "
                         "pipeline folder); build one with zr-align tinyworld build or set it to 0")
    artefacts = [k for k in CORRUPTIONS if k not in WRONG_ATTRIBUTE]
    for kind in artefact_rates or {}:
        if kind not in artefacts:
            raise ValueError(f"artefact_rates: {kind} is not an artefact corruption; allowed: {', '.join(artefacts)}")
    for kind in raw_artefacts:
        if kind not in artefacts:
            raise ValueError(f"raw_artefacts: {kind} is not an artefact corruption; allowed: {', '.join(artefacts)}")


def _choose_prompts(split: str, split_seed: int, num_prompts: int | None, seed: int) -> list[str]:
    """The split's prompts, or a seeded subset of `num_prompts` of them (in the split's order)."""
    prompts = split_prompts(split_seed).as_dict()[split]
    if num_prompts is None:
        return prompts
    if not 1 <= num_prompts <= len(prompts):
        raise ValueError(f"num_prompts must be in [1, {len(prompts)}] for the {split} split, got {num_prompts}")
    chosen = np.random.default_rng([seed, SPLITS.index(split), 10**6]).choice(len(prompts), num_prompts, replace=False)
    return [prompts[i] for i in sorted(chosen)]


class _KindCycle:
    """The corruption kinds in a fixed order, one after the other, continued across prompts."""

    def __init__(self, order: list[str]):
        self.order, self.count = order, 0

    @classmethod
    def seeded(cls, seed: int, split_id: int) -> "_KindCycle":
        """All corruption kinds in a seeded order, continued across prompts so every kind is equally common."""
        order = np.random.default_rng([seed, split_id]).permutation(len(CORRUPTIONS))
        return cls([list(CORRUPTIONS)[i] for i in order])

    def next(self) -> str:
        kind = self.order[self.count % len(self.order)]
        self.count += 1
        return kind


@dataclass
class _Tally:
    """What the images and pairs of all prompts add up to: the JSONL lines and the counts of `stats.json`."""

    rated: list = field(default_factory=list)
    pairs: list = field(default_factory=list)
    sources: dict = field(default_factory=dict)
    preferences: dict = field(default_factory=lambda: dict.fromkeys(("a", "b", "tie"), 0))
    judge_hits: float = 0.0


def _mixed_image(prompt: str, first: str, rng: np.random.Generator, double_fraction: float) -> tuple[np.ndarray, str]:
    """One corrupted render of the "mixed" recipe: the kind `first`, sometimes a second of another dimension."""
    kinds = _corrupt_kinds(first, rng, double_fraction)
    picture = render(prompt, seed=rng)
    for kind in kinds:
        done = corrupt(picture, kind, rng)
        picture = Rendered(done.image, done.scene)
    return picture.image, "corrupt:" + "+".join(kinds)


def _rate_images(images, prompt: str, p: int, split: str, panel: AnnotatorPanel, rng, out_dir: Path, tally: _Tally):
    """Save, judge and rate one prompt's images; returns their names, ratings and overall judge scores."""
    from PIL import Image

    names, ratings, overall = [], [], []
    for j, (image, source) in enumerate(images):
        name = f"images/{p:04d}_{j:02d}.png"
        Image.fromarray(image).save(out_dir / name)
        verdict = judge(image, prompt)
        rating: Ratings = panel.rate(verdict.scores, rng)
        names.append(name)
        ratings.append(rating)
        overall.append(float(np.mean([verdict.scores[d] for d in panel.dimensions])))
        tally.sources[source] = tally.sources.get(source, 0) + 1
        tally.rated.append({
            "image": name, "prompt": prompt, "ratings": rating.ratings,
            "rationale": {d: rationale_text(verdict, d) for d in panel.dimensions if d in RATIONALE_DIMENSIONS},
            "source": source, "split": split,
        })
    return names, ratings, overall


def _draw_pairs(prompt: str, names, ratings, overall, pairs_per_prompt: int, panel: AnnotatorPanel, rng,
                tally: _Tally) -> None:
    """`pairs_per_prompt` image pairs of one prompt, in random order, with the panel's preference."""
    combos = list(itertools.combinations(range(len(names)), 2))
    for c in rng.choice(len(combos), pairs_per_prompt, replace=False):
        a, b = combos[c] if rng.random() < 0.5 else combos[c][::-1]  # random order: "a" is not the cleaner one
        preference = panel.prefer(ratings[a], ratings[b])
        tally.preferences[preference.winner] += 1
        if preference.winner != "tie":
            gap = overall[a] - overall[b]
            tally.judge_hits += 0.5 if gap == 0 else float((gap > 0) == (preference.winner == "a"))
        tally.pairs.append({
            "prompt": prompt, "image_a": names[a], "image_b": names[b], "preference": preference.winner,
            "margin": round(preference.margin, 6),
            "mean_a": {d: round(m, 6) for d, m in ratings[a].mean().items()},
            "mean_b": {d: round(m, 6) for d, m in ratings[b].mean().items()},
        })


def _stats(tally: _Tally, panel: AnnotatorPanel, *, split, recipe, seed, split_seed, sft_model, prompts,
           images_per_prompt, pairs_per_prompt, **extra) -> dict:
    """The contents of `stats.json`."""
    preferences = tally.preferences
    decided = preferences["a"] + preferences["b"]
    words = [w for line in tally.rated for text in line["rationale"].values() for w in text.split()]
    mean_ratings = {d: round(float(np.mean([np.mean(r["ratings"][d]) for r in tally.rated])), 4)
                    for d in panel.dimensions}
    return {
        "split": split, "recipe": recipe, **extra, "seed": seed, "split_seed": split_seed,
        "sft_model": None if sft_model is None else str(sft_model),
        "prompts": prompts, "images": len(tally.rated), "images_per_prompt": images_per_prompt,
        "images_by_source": (_summarise_sources(tally.sources) if recipe == "perception"
                             else dict(sorted(tally.sources.items()))),
        "pairs": len(tally.pairs),
        "pairs_per_prompt": pairs_per_prompt, "preferences": preferences,
        "tie_rate": round(preferences["tie"] / len(tally.pairs), 4),
        "judge_pairwise_accuracy": round(tally.judge_hits / decided, 4) if decided else None,
        "raters": panel.num_raters, "mean_ratings": mean_ratings,
        "yes_share": round(words.count("yes") / max(1, words.count("yes") + words.count("no")), 4),
    }


def _summarise_sources(sources: dict[str, int]) -> dict[str, int]:
    """Counts by number of wrong attributes and by artefact (an image counts once per artefact it has)."""
    out: dict[str, int] = {}
    for source, n in sources.items():
        for part in source.split("+"):
            out[part] = out.get(part, 0) + n
    return dict(sorted(out.items()))


__all__ = ["ARTEFACT_RATES", "check_mix", "RECIPES", "perception_image", "SPLITS", "make_reward_data"]
