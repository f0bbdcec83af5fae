"""Held-out evaluation of TinyWorld reward models by kind of pair, and of what a teacher reads (issue "Reward
models that see").

[`make_eval_set`] writes, for the prompts of one split (the test split: never trained on), into `out_dir`:

- `images/NNNNN.png` and `rated.jsonl`: every image once, with the judge's rationale per dimension (what a
  perfect teacher would write), its scores and its source;
- `pairs.jsonl`: pairs of images of the same prompt, each with a `kind` and the ground-truth preference (the
  judge's overall score, the mean over the rubric; no tie band, so one wrong attribute always decides):

| kind          | a pair of                                                                                  |
|---------------|--------------------------------------------------------------------------------------------|
| `clean_vs_one`| a clean render and the same scene with one attribute wrong                                 |
| `one_vs_two`  | one attribute wrong and the same scene with a second attribute wrong                        |
| `quality`     | a clean render and the same render with one artefact (each kind in turn, flagged strength) |
| `generator`   | two samples of the SFT generator whose judged alignment differs                             |

[`evaluate_kinds`] gives a scorer's pairwise accuracy per kind and overall; [`reading_accuracy`] compares a
teacher's greedy rationale with the judge's, check by check (attributes: the value *and* the verdict right).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from .corrupt import corrupt
from .grammar import ATTRIBUTES, split_prompts
from .judge import judge, overall
from .rationale import ARTEFACT_CHECKS, RATIONALE_DIMENSIONS, rationale_text
from .render import Rendered, render

KINDS: tuple[str, ...] = ("clean_vs_one", "one_vs_two", "quality", "generator")
# The quality pairs' artefacts: one corruption per artefact check of the judge. `object_cast`, a second form of
# colour shift, is left out so that the evaluation sets (and the shipped models' figures) stay as they were.
ARTEFACT_KINDS: tuple[str, ...] = ("blur", "noise", "color_shift", "fragments", "crop", "low_contrast", "clutter")


def _with_wrong(picture: Rendered, attributes, rng) -> Rendered:
    for attribute in attributes:
        done = corrupt(picture, f"wrong_{attribute}", rng)
        picture = Rendered(done.image, done.scene)
    return picture


def make_eval_set(out_dir, split: str = "test", seed: int = 1, sft_model: str | None = None,
                  pairs_per_kind: int = 120, generator_pairs: int = 240, samples_per_prompt: int = 10,
                  sample_steps: int = 20, split_seed: int = 0) -> dict:
    """Write the evaluation set (files: see the module docstring); returns the counts per kind.

    Args:
        split (`str`): prompt split of `split_prompts(split_seed)`; "test" for the shipped figures, "validation"
            to choose settings.
        pairs_per_kind (`int`): pairs of each synthetic kind, spread over the prompts in turn.
        sft_model (`str`, *optional*): a TinyWorld pipeline folder; without it there are no generator pairs.
        generator_pairs (`int`): at most this many generator pairs (drawn among the pairs of samples of one prompt
            whose judged alignment and overall score differ). Cost: `samples_per_prompt` samples per prompt.
    """
    from PIL import Image

    prompts = split_prompts(split_seed).as_dict()[split]
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rated, pairs, verdicts = [], [], {}
    rng = np.random.default_rng([seed, 77])

    def add(image: np.ndarray, prompt: str, source: str) -> str:
        name = f"images/{len(rated):05d}.png"
        Image.fromarray(image).save(out / name)
        verdict = judge(image, prompt)
        verdicts[name] = verdict
        rated.append({"image": name, "prompt": prompt, "source": source, "scores": verdict.scores,
                      "rationale": {d: rationale_text(verdict, d) for d in RATIONALE_DIMENSIONS}})
        return name

    def add_pair(kind: str, prompt: str, a: str, b: str) -> None:
        gap = overall(verdicts[a]) - overall(verdicts[b])
        if gap == 0:
            return
        if rng.random() < 0.5:
            a, b, gap = b, a, -gap
        pairs.append({"kind": kind, "prompt": prompt, "image_a": a, "image_b": b,
                      "preference": "a" if gap > 0 else "b", "margin": abs(gap)})

    for i in range(pairs_per_kind):
        prompt = prompts[i % len(prompts)]
        clean = render(prompt, seed=rng)
        first, second = rng.choice(ATTRIBUTES, 2, replace=False)
        one = _with_wrong(clean, [first], rng)
        two = _with_wrong(one, [second], rng)
        names = [add(x.image, prompt, s) for x, s in ((clean, "render"), (one, f"wrong_{first}"),
                                                       (two, f"wrong_{first}+wrong_{second}"))]
        add_pair("clean_vs_one", prompt, names[0], names[1])
        add_pair("one_vs_two", prompt, names[1], names[2])
        kind = ARTEFACT_KINDS[i % len(ARTEFACT_KINDS)]
        degraded = corrupt(clean, kind, rng)
        add_pair("quality", prompt, names[0], add(degraded.image, prompt, kind))

    if sft_model is not None:
        from .sample import generate, load_pipeline

        sample_prompts = [p for p in prompts for _ in range(samples_per_prompt)]
        images = generate(load_pipeline(sft_model), sample_prompts, seed=seed * 100_000, steps=sample_steps)
        names = [add(image, prompt, "sft_sample") for image, prompt in zip(images, sample_prompts)]
        candidates = []
        for p, prompt in enumerate(prompts):
            group = names[p * samples_per_prompt:(p + 1) * samples_per_prompt]
            for j, a in enumerate(group):
                for b in group[j + 1:]:
                    va, vb = verdicts[a], verdicts[b]
                    if va.scores["alignment"] != vb.scores["alignment"] and overall(va) != overall(vb):
                        candidates.append((prompt, a, b))
        for c in sorted(rng.choice(len(candidates), min(generator_pairs, len(candidates)), replace=False)):
            add_pair("generator", *candidates[c])

    (out / "rated.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rated))
    (out / "pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
    stats = {"split": split, "seed": seed, "images": len(rated),
             "pairs": {k: sum(p["kind"] == k for p in pairs) for k in KINDS}}
    (out / "stats.json").write_text(json.dumps(stats, indent=2) + "\n")
    return stats


def load_images(path: Path, names: list[str]) -> torch.Tensor:
    """The images `names` (paths relative to `path`) as a float `(B, 3, H, W)` batch in [0, 1]."""
    from PIL import Image

    arrays = [np.asarray(Image.open(path / n).convert("RGB"), dtype=np.float32) / 255.0 for n in names]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)


@torch.no_grad()
def _score_each(scorer, eval_dir, batch_size: int, per_image) -> dict:
    """image name -> `per_image(out)`'s entry for it, over every image of an evaluation set, in batches."""
    eval_dir = Path(eval_dir)
    rated = [json.loads(line) for line in (eval_dir / "rated.jsonl").read_text().splitlines()]
    scores = {}
    for start in range(0, len(rated), batch_size):
        chunk = rated[start:start + batch_size]
        out = scorer(load_images(eval_dir, [r["image"] for r in chunk]), [r["prompt"] for r in chunk])
        scores.update(zip((r["image"] for r in chunk), per_image(out)))
    return scores


def score_eval_images(scorer, eval_dir, batch_size: int = 32) -> dict[str, float]:
    """image name -> the scorer's reward, for every image of an evaluation set."""
    return _score_each(scorer, eval_dir, batch_size, lambda out: out.reward.float().tolist())


def score_eval_records(scorer, eval_dir, batch_size: int = 32) -> dict[str, dict]:
    """image name -> the scorer's reward and per-dimension scores (`RewardOutput.to_records`), for every image of
    an evaluation set."""
    return _score_each(scorer, eval_dir, batch_size, lambda out: out.to_records())


def pair_hits(rewards: dict[str, float], eval_dir) -> list[dict]:
    """One row per pair of an evaluation set: its kind, its prompt, the judge's `preferred` image and the `other`,
    and `hit`, 1 when the scorer prefers the image the judge prefers, 0 when not, 0.5 for a tied reward (from
    `score_eval_images`' output)."""
    pairs = [json.loads(line) for line in (Path(eval_dir) / "pairs.jsonl").read_text().splitlines()]
    rows = []
    for p in pairs:
        preferred, other = (p["image_a"], p["image_b"]) if p["preference"] == "a" else (p["image_b"], p["image_a"])
        gap = rewards[preferred] - rewards[other]
        hit = 0.5 if gap == 0 else float(gap > 0)
        rows.append({"kind": p["kind"], "prompt": p["prompt"], "preferred": preferred, "other": other, "hit": hit})
    return rows


def kind_accuracy(rows: list[dict]) -> dict[str, float]:
    """Mean hit per kind and over all pairs ("all") of `pair_hits` rows."""
    hits: dict[str, list[float]] = {}
    for row in rows:
        hits.setdefault(row["kind"], []).append(row["hit"])
        hits.setdefault("all", []).append(row["hit"])
    return {k: float(np.mean(v)) for k, v in hits.items()}


def evaluate_kinds(rewards: dict[str, float], eval_dir) -> dict[str, float]:
    """Pairwise accuracy per kind and overall (a tied reward counts half) from `score_eval_images`' output."""
    return {k: round(v, 4) for k, v in kind_accuracy(pair_hits(rewards, eval_dir)).items()}


def rationale_checks(text: str, dimension: str) -> dict[str, str]:
    """A rationale -> {check: what it says}: attributes read "value yes|no", artefacts "yes|no"."""
    words = text.split()
    if dimension == "alignment":
        return {a: " ".join(words[i + 1:i + 3]) for i, w in enumerate(words) if (a := w) in ATTRIBUTES}
    names = {word for word, _ in ARTEFACT_CHECKS[dimension]}
    return {w: words[i + 1] for i, w in enumerate(words[:-1]) if w in names}


@torch.no_grad()
def readings(teacher, eval_dir, batch_size: int = 32, sources: tuple[str, ...] | None = None,
             limit: int | None = None) -> list[dict]:
    """What the teacher's greedy rationale says against what the judge's says, one row per image whose source
    starts with one of `sources` (all by default): `{"image", "prompt", "source", "checks": {check: (judge's,
    teacher's)}}` (attributes: "value yes|no", each artefact: "yes|no"; the teacher's is None when it is silent)."""
    eval_dir = Path(eval_dir)
    rated = [json.loads(line) for line in (eval_dir / "rated.jsonl").read_text().splitlines()]
    if sources is not None:
        rated = [r for r in rated if r["source"].startswith(sources)]
    rated = rated[:limit]
    rows = []
    for start in range(0, len(rated), batch_size):
        chunk = rated[start:start + batch_size]
        rollouts = teacher.generate(load_images(eval_dir, [r["image"] for r in chunk]), [r["prompt"] for r in chunk],
                                    greedy=True)
        texts = rollouts.texts(teacher.tokenizer)
        dims = teacher.dimensions
        for b, record in enumerate(chunk):
            checks = {}
            for d, dim in enumerate(dims):
                if dim not in record["rationale"]:
                    continue
                said = rationale_checks(texts[b * len(dims) + d], dim)
                checks.update({check: (value, said.get(check))
                               for check, value in rationale_checks(record["rationale"][dim], dim).items()})
            rows.append({"image": record["image"], "prompt": record["prompt"], "source": record["source"],
                         "checks": checks})
    return rows


def reading_accuracy(teacher, eval_dir, batch_size: int = 32, sources: tuple[str, ...] | None = None,
                     limit: int | None = None) -> dict:
    """Share of images where the teacher's greedy rationale says what the judge's says, per check (size, color,
    shape, position: value and verdict; each artefact: yes/no), over the images whose source starts with one of
    `sources` (all by default)."""
    hits: dict[str, list[float]] = {}
    for row in readings(teacher, eval_dir, batch_size, sources, limit):
        for check, (truth, said) in row["checks"].items():
            hits.setdefault(check, []).append(float(said == truth))
    return {k: round(float(np.mean(v)), 4) for k, v in hits.items()}


__all__ = ["KINDS", "evaluate_kinds", "kind_accuracy", "make_eval_set", "pair_hits", "rationale_checks",
           "reading_accuracy", "readings", "score_eval_images", "score_eval_records"]
