"""Compare TinyWorld models on the same prompts and noise, judged by the ground truth (`zr-align compare`).

A model is a TinyWorld pipeline folder plus an optional LoRA (`ModelSpec`). `compare_models`:

1. checks everything before sampling anything: names, pipeline folders (a `StableDiffusionPipeline`, TinyWorld's
   family `sd`), LoRA folders and that each LoRA fits its base (read from the file against a weightless UNet),
   prompts (every one in TinyWorld's grammar; several prompt lists must have the same length: line `i` of each
   is one paired comparison);
2. samples every model: image `i` shows prompt `i % P` with the noise of seed `seed + i`, the same for every
   model. `OUT/samples/NAME/00000.png, ...` and `samples.jsonl` lines `{"file", "prompt", "seed", "model"}`,
   written batch by batch (PNG first, its line after), so an interrupted run keeps every finished batch and a
   rerun samples only what is missing. `model.json` holds a fingerprint of the weights (sha256 of the base's
   and the LoRA's files, and of the sampler's own, such as a guiding reward model) and the sampler: samples of
   another model are refused, or replaced with `replace_stale=True`;
3. judges every image with the ground-truth judge (never with a reward model that may have been trained on);
4. per pair of models: good / same / bad (`judge.net_preference`, tie band `margin` on the overall judge score)
   and the net preference with a 95% percentile bootstrap interval that resamples *prompts* (the images of one
   prompt move together: they share what the prompt makes hard); per model: per-attribute accuracy and the
   all-four-correct rate with the same kind of interval, and, given `reward`, the mean reward-model score
   (for reference only: that is the quantity a reward-tuned model was optimised for);
5. writes `OUT/compare.json` and `OUT/compare.md`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .grammar import ATTRIBUTES, parse_prompt, split_prompts
from .judge import Verdict, judge, net_preference, overall, summarize
from .sample import generate, load_pipeline

SAMPLE_INDEX = "samples.jsonl"
MODEL_CARD = "model.json"
TINYWORLD_PIPELINE = "StableDiffusionPipeline"
_FAMILY_OF_CLASS = {"StableDiffusionPipeline": "sd", "StableDiffusionXLPipeline": "sdxl",
                    "StableDiffusion3Pipeline": "sd3", "PixArtSigmaPipeline": "pixart", "FluxPipeline": "flux"}
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


@dataclass(frozen=True)
class ModelSpec:
    """One model of a comparison.

    Args:
        name: a short name (letters, digits, `_.-`): the folder `OUT/samples/NAME` and the row of every table.
        model: a TinyWorld pipeline folder (e.g. `models/tinyworld/sft`).
        lora: a folder with `pytorch_lora_weights.safetensors` (a `train_t2i.py` run's `OUT/lora`), or None.
        prompts: this model's own prompt list (paired line by line with the others'), or None for the shared one.
        sampler: `sampler(pipe, prompts, seed, steps) -> uint8 (N, 64, 64, 3)` images; None is
            `sample.generate` (DDIM, image `i` with the noise of seed `seed + i`). A hook for samplers that
            change sampling itself, such as reward guidance.
        sampler_label: names the sampler and its settings in `model.json`, so that samples of other settings
            are not reused.
        sampler_weights: a folder of weights the sampler uses besides the model's, e.g. the reward model that
            steers guidance: its files join the fingerprint, so that samples steered by other weights are not
            reused.
    """

    name: str
    model: str
    lora: str | None = None
    prompts: str | None = None
    sampler: Callable | None = None
    sampler_label: str = "ddim"
    sampler_weights: str | None = None


@dataclass(frozen=True)
class Interval:
    """A point estimate with a (bootstrap) confidence interval."""

    value: float
    low: float
    high: float

    def to_dict(self) -> dict:
        return {"value": self.value, "low": self.low, "high": self.high}

    def __format__(self, spec: str) -> str:
        spec = spec or ".3f"
        return f"{self.value:{spec}} [{self.low:{spec}}, {self.high:{spec}}]"


# ------------------------------------------------------------------ statistics
def bootstrap_ratio(numerators, counts, resamples: int = 2000, level: float = 0.95, seed: int = 0) -> Interval:
    """`sum(numerators) / sum(counts)` with a percentile bootstrap interval that resamples units (prompts).

    Args:
        numerators: per unit, the sum of the per-image values (e.g. +1 good, -1 bad, or 1 correct).
        counts: per unit, its number of images; units without images are left out.
        resamples: bootstrap draws of as many units as there are, with replacement.
        level: coverage of the interval (0.95: the 2.5% and 97.5% quantiles).
        seed: seeds the draws: the same data always gives the same interval.
    """
    numerators, counts = np.asarray(numerators, dtype=np.float64), np.asarray(counts, dtype=np.float64)
    keep = counts > 0
    numerators, counts = numerators[keep], counts[keep]
    if not len(counts):
        raise ValueError("bootstrap_ratio needs at least one unit with images")
    draws = np.random.default_rng(seed).integers(0, len(counts), size=(resamples, len(counts)))
    ratios = numerators[draws].sum(axis=1) / counts[draws].sum(axis=1)  # (resamples,)
    low, high = np.quantile(ratios, [(1 - level) / 2, (1 + level) / 2])
    return Interval(float(numerators.sum() / counts.sum()), float(low), float(high))


def unit_sums(values, units: np.ndarray, num_units: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-unit sums of per-image values, and per-unit image counts."""
    values = np.asarray(values, dtype=np.float64)
    return np.bincount(units, weights=values, minlength=num_units), np.bincount(units, minlength=num_units)


def compare_pair(candidate: list[Verdict], reference: list[Verdict], units: np.ndarray, margin: float = 0.2,
                 seed: int = 0) -> dict:
    """Good / same / bad of `candidate` against `reference` (paired images) and the net with a 95% interval."""
    deltas = np.array([overall(c) - overall(r) for c, r in zip(candidate, reference)])
    signs = (deltas > margin).astype(np.float64) - (deltas < -margin)
    net = bootstrap_ratio(*unit_sums(signs, units, int(units.max()) + 1), seed=seed)
    return {**net_preference(candidate, reference, margin), "net_interval": net.to_dict()}


def accuracy_intervals(verdicts: list[Verdict], units: np.ndarray, seed: int = 0) -> dict[str, Interval]:
    """Per-attribute accuracy and the all-four-correct rate, each with a 95% interval over prompts."""
    num_units = int(units.max()) + 1
    columns = {a: [v.correct[a] for v in verdicts] for a in ATTRIBUTES}
    columns["all_correct"] = [all(v.correct.values()) for v in verdicts]
    return {name: bootstrap_ratio(*unit_sums(values, units, num_units), seed=seed) for name, values in columns.items()}


# ------------------------------------------------------------------ checking the input
def load_prompt_list(source: str) -> list[str]:
    """Prompts from `tinyworld:<split>`, a `.txt` file (one per line) or a `.jsonl` file (a "prompt" field);
    each must be a TinyWorld prompt (the judge reads the scene it asks for)."""
    if source.startswith("tinyworld:"):
        splits = split_prompts(0).as_dict()
        split = source.split(":", 1)[1]
        if split not in splits:
            raise ValueError(f"unknown TinyWorld split {split!r}; use one of {', '.join(splits)}")
        return list(splits[split])
    path = Path(source)
    if not path.is_file():
        raise ValueError(f"prompt file {path} does not exist")
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    prompts = [json.loads(line)["prompt"] if path.suffix == ".jsonl" else line.strip() for line in lines]
    if not prompts:
        raise ValueError(f"prompt file {path} has no prompts")
    for number, prompt in enumerate(prompts, 1):
        try:
            parse_prompt(prompt)
        except ValueError as error:
            raise ValueError(f"{path} prompt {number}: {error}") from None
    return prompts


def check_model(spec: ModelSpec) -> None:
    """One-line `ValueError` unless `spec` names a TinyWorld pipeline folder and a LoRA that fits it."""
    from diffusers import UNet2DConditionModel

    from ..lora import check_lora_fits

    if not _NAME.fullmatch(spec.name):
        raise ValueError(f"model name {spec.name!r} must be letters, digits, '_', '.' or '-' (it names a folder)")
    index = Path(spec.model) / "model_index.json"
    if not index.is_file():
        raise ValueError(f"model {spec.name}: {spec.model} is not a pipeline folder (no model_index.json)")
    class_name = json.loads(index.read_text()).get("_class_name")
    if class_name != TINYWORLD_PIPELINE:
        family = _FAMILY_OF_CLASS.get(class_name, "unknown")
        raise ValueError(f"model {spec.name}: {spec.model} is a {class_name} (family {family}); compare samples "
                         f"TinyWorld models, {TINYWORLD_PIPELINE} folders (family sd) such as models/tinyworld/sft")
    if spec.lora is None:
        return
    if not Path(spec.lora).is_dir():
        raise ValueError(f"model {spec.name}: LoRA folder {spec.lora} does not exist")
    with torch.device("meta"):  # shapes only: no weights are read or allocated
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(Path(spec.model) / "unet"))
    try:
        check_lora_fits(unet, spec.lora)
    except ValueError as error:
        raise ValueError(f"model {spec.name}: {error}") from None


COMPARE_OPTIONS = ("prompts", "num_images", "seed", "steps", "reward", "margin")
_MODEL_FIELDS = ("model", "lora", "prompts")


def specs_from_dict(models: dict) -> list[ModelSpec]:
    """`{NAME: {"model": FOLDER, "lora": FOLDER, "prompts": SOURCE}}` (lora and prompts optional) as specs."""
    specs = []
    for name, fields in models.items():
        fields = {"model": fields} if isinstance(fields, str) else dict(fields or {})
        unknown = sorted(set(fields) - set(_MODEL_FIELDS))
        if unknown:
            raise ValueError(f"model {name}: unknown field {unknown[0]!r}; allowed: {', '.join(_MODEL_FIELDS)}")
        if not fields.get("model"):
            raise ValueError(f"model {name} has no pipeline folder (give --model {name}=FOLDER or its 'model' field)")
        specs.append(ModelSpec(str(name), **{k: None if v is None else str(v) for k, v in fields.items()}))
    return specs


def load_compare_config(path) -> dict:
    """A comparison YAML: `models: {NAME: {model, lora, prompts}}` and any of `COMPARE_OPTIONS`; returns
    `{"models": {...}, option: value, ...}`."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"comparison config {path} does not exist")
    config = yaml.safe_load(path.read_text()) or {}
    if not isinstance(config, dict):
        raise ValueError(f"{path} must hold a mapping with 'models' and options")
    unknown = sorted(set(config) - {"models", *COMPARE_OPTIONS})
    if unknown:
        raise ValueError(f"{path}: unknown key {unknown[0]!r}; allowed: models, {', '.join(COMPARE_OPTIONS)}")
    if not isinstance(config.get("models", {}), dict):
        raise ValueError(f"{path}: 'models' must map names to {{model, lora, prompts}}")
    return {"models": dict(config.get("models") or {}), **{k: v for k, v in config.items() if k != "models"}}


def _prompt_lists(specs: list[ModelSpec], prompts: str) -> dict[str, list[str]]:
    """Each model's prompts; every list must have the same length (line i of each is one paired comparison)."""
    cache: dict[str, list[str]] = {}
    lists = {}
    for spec in specs:
        source = spec.prompts or prompts
        if source not in cache:
            cache[source] = load_prompt_list(source)
        lists[spec.name] = cache[source]
    lengths = {s.prompts or prompts: len(lists[s.name]) for s in specs}
    if len(set(lengths.values())) > 1:
        described = ", ".join(f"{source} has {n}" for source, n in lengths.items())
        raise ValueError(f"prompt lists differ in length ({described}); line i of every list is one paired "
                         "comparison, so they must have as many prompts")
    return lists


def _weight_files(folder) -> list[Path]:
    return sorted(p for p in Path(folder).rglob("*") if p.is_file() and p.suffix in (".safetensors", ".json"))


def _fingerprint(spec: ModelSpec, steps: int) -> dict:
    """What made a sample folder: weights (sha256 of every weight and config file of the model, its LoRA and the
    sampler's own weights), sampler and steps."""
    digest = hashlib.sha256()
    files = _weight_files(spec.model)
    if spec.lora is not None:
        files.append(Path(spec.lora) / "pytorch_lora_weights.safetensors")
    if spec.sampler_weights is not None:
        files += _weight_files(spec.sampler_weights)
    for path in files:
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return {"model": str(spec.model), "lora": None if spec.lora is None else str(spec.lora),
            "sampler": spec.sampler_label, "steps": steps, "weights_sha256": digest.hexdigest()}


# ------------------------------------------------------------------ samples on disk, resumable
_IDENTITY = ("weights_sha256", "sampler", "steps")


def _read_index(folder: Path) -> list[dict]:
    """The complete lines of `samples.jsonl` (a line cut by a kill is dropped)."""
    index = folder / SAMPLE_INDEX
    records = []
    for line in index.read_text().splitlines() if index.is_file() else []:
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return records


def _finished_samples(folder: Path, card: dict, expected: list[tuple[str, int]], replace_stale: bool) -> int:
    """How many leading samples in `folder` are finished and are the ones asked for; a folder made by another
    model, sampler or with other prompts / seeds is refused (or cleared with `replace_stale`)."""
    import shutil

    old = json.loads((folder / MODEL_CARD).read_text()) if (folder / MODEL_CARD).is_file() else None
    records = _read_index(folder)
    same = [(r.get("prompt"), r.get("seed")) == pair for r, pair in zip(records, expected)]
    done = 0
    while done < len(same) and same[done] and (folder / records[done].get("file", "")).is_file():
        done += 1
    mismatch = None
    if old is not None and any(old.get(key) != card[key] for key in _IDENTITY):
        mismatch = "another model or sampler (model.json differs)"
    elif not all(same):
        mismatch = f"other prompts or seeds (line {same.index(False) + 1} of {SAMPLE_INDEX} differs)"
    elif old is None and folder.is_dir() and any(folder.iterdir()):
        mismatch = f"an unknown model (no {MODEL_CARD})"
    if mismatch is not None:
        if not replace_stale:
            raise ValueError(f"{folder} holds samples of {mismatch}; sample them again with --replace-stale "
                             "(replace_stale=True) or choose another output folder")
        shutil.rmtree(folder)
        done, records = 0, []
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MODEL_CARD).write_text(json.dumps(card, indent=1) + "\n")
    if done < len(expected):  # before appending: drop the lines of unfinished images and a line torn by a kill
        (folder / SAMPLE_INDEX).write_text("".join(json.dumps(r) + "\n" for r in records[:done]))
    return done


def _write_batch(folder: Path, name: str, images: np.ndarray, prompts: list[str], seeds: list[int],
                 start: int) -> None:
    """PNGs first (each written whole, then renamed), then their index lines: a listed image is complete."""
    from PIL import Image

    lines = []
    for offset, (image, prompt, seed) in enumerate(zip(images, prompts, seeds)):
        file = f"{start + offset:05d}.png"
        Image.fromarray(image).save(folder / f"{file}.tmp", format="PNG")
        os.replace(folder / f"{file}.tmp", folder / file)
        lines.append(json.dumps({"file": file, "prompt": prompt, "seed": seed, "model": name}) + "\n")
    with open(folder / SAMPLE_INDEX, "a") as index:
        index.write("".join(lines))
        index.flush()
        os.fsync(index.fileno())


def sample_model(spec: ModelSpec, folder, prompts: list[str], seed: int, steps: int = 20, batch_size: int = 16,
                 replace_stale: bool = False, progress: bool = True) -> int:
    """Sample `spec` into `folder`: image `i` shows `prompts[i]` with the noise of seed `seed + i`. Finished
    images of an earlier run are kept; returns how many were generated now."""
    from tqdm.auto import tqdm

    folder = Path(folder)
    seeds = [seed + i for i in range(len(prompts))]
    done = _finished_samples(folder, _fingerprint(spec, steps), list(zip(prompts, seeds)), replace_stale)
    if done == len(prompts):
        return 0
    pipe = load_pipeline(spec.model, spec.lora)
    sampler = spec.sampler or generate
    with tqdm(total=len(prompts), initial=done, desc=f"sample {spec.name}", disable=not progress) as bar:
        for start in range(done, len(prompts), batch_size):
            chunk = prompts[start:start + batch_size]
            images = sampler(pipe, chunk, seed=seeds[start], steps=steps)
            _write_batch(folder, spec.name, images, chunk, seeds[start:start + batch_size], start)
            bar.update(len(chunk))
    return len(prompts) - done


def load_samples(folder, count: int) -> np.ndarray:
    """The first `count` images of a sample folder as uint8 `(count, H, W, 3)`."""
    from PIL import Image

    records = _read_index(Path(folder))[:count]
    if len(records) < count:
        raise ValueError(f"{folder} has {len(records)} finished samples, {count} needed")
    images = []
    for record in records:
        with Image.open(Path(folder) / record["file"]) as image:
            images.append(np.asarray(image.convert("RGB")))
    return np.stack(images)


# ------------------------------------------------------------------ the comparison
def _reward_scores(model, images: np.ndarray, prompts: list[str]) -> np.ndarray:
    """Per-image reward of a `ZRewardModel` (no graph) for uint8 `(N, H, W, 3)` images."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255  # (N, 3, H, W) in [0, 1]
    return model.score(x, prompts, batch_size=32).reward.numpy()


def compare_models(models: list[ModelSpec], out, prompts: str = "tinyworld:test", num_images: int | None = None,
                   seed: int = 10_000, steps: int = 20, reward=None, margin: float = 0.2,
                   batch_size: int = 16, replace_stale: bool = False, progress: bool = True) -> dict:
    """Sample, judge and compare `models` (see the module docstring); writes `OUT/compare.json` and
    `OUT/compare.md` and returns what `compare.json` holds.

    Args:
        models: the models, in table order; pairs are (later model, earlier model).
        out: output folder (`samples/NAME/` per model, `compare.json`, `compare.md`).
        prompts: the shared prompt list: `tinyworld:<split>`, `.txt` or `.jsonl` (a model may have its own).
        num_images: images per model; image `i` shows prompt `i % P` (default: one per prompt).
        seed: image `i` of every model uses the noise of seed `seed + i`.
        steps: sampling steps.
        reward: a reward-model folder (or a loaded `ZRewardModel`) whose mean score is reported for reference, or
            None.
        margin: GSB tie band on the overall judge score (0.2: one attribute decides).
        replace_stale: sample again folders made by another model, sampler, prompts or seeds (else refused).
    """
    from tqdm.auto import tqdm

    names = [spec.name for spec in models]
    if not models or len(set(names)) != len(names):
        raise ValueError(f"compare needs at least one model and distinct names; got {names}")
    for spec in models:
        check_model(spec)
    lists = _prompt_lists(models, prompts)
    num_prompts = len(lists[names[0]])
    num_images = num_prompts if num_images is None else num_images
    if num_images < 1:
        raise ValueError(f"num_images must be >= 1; got {num_images}")
    units = np.arange(num_images) % num_prompts  # image i -> its prompt: the bootstrap's resampling unit
    reward_model = reward
    if isinstance(reward, (str, Path)):
        from ..rewards import ZRewardModel

        reward_model = ZRewardModel.from_pretrained(reward)  # before sampling: a bad folder fails at once
    out = Path(out)
    for spec in models:
        sample_model(spec, out / "samples" / spec.name, [lists[spec.name][u] for u in units], seed, steps,
                     batch_size, replace_stale, progress)
    verdicts, rewards = {}, {}
    for spec in tqdm(models, desc="judge", disable=not progress):
        image_prompts = [lists[spec.name][u] for u in units]
        images = load_samples(out / "samples" / spec.name, num_images)
        verdicts[spec.name] = [judge(image, prompt) for image, prompt in zip(images, image_prompts)]
        if reward_model is not None:
            rewards[spec.name] = _reward_scores(reward_model, images, image_prompts)
    result = {"settings": {"prompts": prompts, "num_prompts": num_prompts, "num_images": num_images, "seed": seed,
                           "steps": steps, "margin": margin,
                           "reward": str(reward) if isinstance(reward, (str, Path)) else type(reward).__name__,
                           "interval": "95% percentile bootstrap over prompts, 2000 resamples"},
              "models": {}, "pairs": []}
    for spec in models:
        entry = {"model": spec.model, "lora": spec.lora, "prompts": spec.prompts or prompts,
                 "sampler": spec.sampler_label, "samples": str(out / "samples" / spec.name),
                 "summary": summarize(verdicts[spec.name]),
                 "accuracy": {k: v.to_dict() for k, v in accuracy_intervals(verdicts[spec.name], units).items()}}
        if spec.name in rewards:
            entry["reward_mean"] = bootstrap_ratio(*unit_sums(rewards[spec.name], units, num_prompts)).to_dict()
        result["models"][spec.name] = entry
    for j, candidate in enumerate(names):
        for reference in names[:j]:
            pair = compare_pair(verdicts[candidate], verdicts[reference], units, margin)
            result["pairs"].append({"candidate": candidate, "reference": reference, **pair})
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "compare.md").write_text(format_markdown(result))
    return result


def _interval(d: dict, spec: str = ".3f") -> str:
    return format(Interval(d["value"], d["low"], d["high"]), spec)


def format_markdown(result: dict) -> str:
    """`compare.md`: one table of models (accuracy with 95% intervals), one of pairs (GSB)."""
    s = result["settings"]
    columns = [*ATTRIBUTES, "all_correct"]
    lines = [f"# TinyWorld comparison: {s['num_images']} images per model, {s['num_prompts']} prompts "
             f"({s['prompts']}), noise seeds {s['seed']}...{s['seed'] + s['num_images'] - 1}", "",
             f"Judged by the ground-truth judge; intervals: {s['interval']}.", "",
             "| model | " + " | ".join(c.replace("all_correct", "all four correct") for c in columns)
             + " | reward-model mean |",
             "|---" * (len(columns) + 2) + "|"]
    for name, m in result["models"].items():
        reward = _interval(m["reward_mean"]) if "reward_mean" in m else "-"
        lines.append(f"| {name} | " + " | ".join(_interval(m["accuracy"][c]) for c in columns) + f" | {reward} |")
    if result["pairs"]:
        lines += ["", f"GSB (tie band {s['margin']} of the overall judge score):", "",
                  "| candidate vs reference | good | same | bad | net [95% CI] |", "|---|---|---|---|---|"]
        for p in result["pairs"]:
            lines.append(f"| {p['candidate']} vs {p['reference']} | {p['good']} | {p['same']} | {p['bad']} | "
                         f"{_interval(p['net_interval'], '+.1%')} |")
    return "\n".join(lines) + "\n"
