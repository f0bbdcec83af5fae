"""The main job on the embedded TinyWorld default (`make demo`): reward fine-tuning against a fair SFT control,
judged by the truth on held-out prompts.

Arms, all on the shipped SFT baseline (`models/tinyworld/sft`):

- **base**: the baseline itself;
- **SFT control**: the same weights trained with `method: sft` on TinyWorld renders of the same training prompts,
  for the same number of steps, with as many renders per step as the reward run's SFT anchor, at the same learning
  rate (`configs/tinyworld_sft_lora.yaml`, with the reward run's `arms.MATCHED` settings): what the same extra training
  buys without the reward (the baseline before tuning is not that control);
- **reward-tuned**: `configs/tinyworld_draft.yaml` through `zr_align.diffusion.fine_tune` (what `train_t2i.py`
  runs): DRaFT-K with the shipped RISD student (`models/tinyworld/student`) as the differentiable reward, or the
  ensemble of it and the students the config's `reward.ensemble` names (`zr_align.rewards.ensemble`);
- **guidance**: the base sampled with per-step reward guidance (`zr_align.guidance`) by the same student as stored,
  no training (settings `GUIDANCE`); `extra_arms` adds more samplers the same way.

A trained arm is its run's LoRA on the base (`RUN/lora`), or with `model.trainable: full` its whole pipeline
(`RUN/pipeline`); with `soup_seeds`, the average of the pipelines of its runs at those seeds (a model soup,
`zr_align.diffusion.soup`).

Phases, one progress bar each: 1 reward fine-tuning and 2 SFT control (`arms.py`: every run at one thread, side by
side in worker processes, one bar over the steps of all of them), 3 sampling and judging on the held-out
prompts (`zr_align.tinyworld.compare`: the test split, or `eval_split="validation"` to choose settings without
touching it; the same noise seed per image for every arm; the ground-truth judge, never the reward that was
optimised), 4 training curves (every checkpoint on the validation prompts, `curves.py`), 5 the report:
`OUT/report.md`, `OUT/report.html` (self-contained), `OUT/report.json` and the figures (`report.py`).
GSB: an image is "good" when an arm's overall judge score beats the base's by more than the tie band, "bad" when
it loses by more; net = (good - bad) / all with a 95% bootstrap interval over prompts (the paper reports +41.3%).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np

from ..diffusion import load_train_config
from ..rewards import ZRewardModel
from ..tinyworld.compare import ModelSpec, compare_models, load_samples
from ..tinyworld.grammar import split_prompts
from ..tinyworld.judge import judge
from . import report as figures
from .arms import train_arms
from .curves import checkpoint_curve

EVAL_SEED, CURVE_SEED, GRID_COLUMNS = 10_000, 20_000, 8
# Reward guidance of the guidance arm, chosen on the validation prompts (benchmarks/results/guidance_validation.txt,
# 36 images, GSB net vs plain sampling): scale 0.05 on the second half of the steps +44.4% at ~0.7 s extra per
# image. The benchmark's own choice, scale 0.02 on every step (+50.0%, within the noise of 36 images), costs
# ~1.9 s extra per image: too slow for the demo's time budget. Scale 0.1 or more gave +17% to -11% (scale 1.0 on
# the first half ruins the images: -87% on the test prompts).
GUIDANCE = {"scale": 0.05, "window": (0.5, 1.0)}
def guidance_arm(base_model: str, reward_model, options: dict, reward_path: str) -> ModelSpec:
    """The base model sampled with per-step reward guidance (`zr_align.guidance.generate`, mode "guidance") by
    `reward_model`, loaded from `reward_path` (its files are part of the samples' fingerprint): the same initial
    noise as every other arm (image `i` from seed `seed + i`), no training."""
    from ..guidance import GuidanceOptions
    from ..guidance import generate as guided_generate

    guidance = GuidanceOptions(**options)

    def sampler(pipe, prompts: list[str], seed: int, steps: int) -> np.ndarray:
        out = guided_generate(pipe, prompts, "guidance", reward_model, seeds=[seed + i for i in range(len(prompts))],
                              num_inference_steps=steps, options=guidance)
        return (out.images.permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype(np.uint8)

    label = "reward guidance at sampling time (" + ", ".join(f"{k} {v}" for k, v in options.items()) + ")"
    return ModelSpec("guidance", base_model, sampler=sampler, sampler_label=label, sampler_weights=reward_path)


def trained_arm(name: str, run: dict, base_model: str) -> ModelSpec:
    """The arm of a training run (`arms.train_stage`): its whole pipeline (`RUN/pipeline`) when it trained every weight
    (`model.trainable: full`), else the base with its LoRA (`RUN/lora`)."""
    if run.get("soup"):
        return ModelSpec(name, run["soup"]["weights"])
    if run["resolved"]["model"]["trainable"] == "full":
        return ModelSpec(name, str(Path(run["dir"]) / "pipeline"))
    return ModelSpec(name, base_model, str(Path(run["dir"]) / "lora"))


def _describe(run: dict) -> str:
    c = run["resolved"]
    weights = ("every denoiser weight" if c["model"]["trainable"] == "full" else f"LoRA rank {c['lora']['rank']}")
    tail = f"{weights}, lr {c['optim']['lr']}, batch {c['batch_size']}"
    if run.get("soup"):
        seeds = run["soup"]["seeds"]
        tail += f", the weights of {len(seeds)} runs (seeds {', '.join(map(str, seeds))}) averaged"
    data = c["data"]["sft_data"]
    source = "TinyWorld renders of the train prompts" if data == "tinyworld:train" else f"`{data}`"
    if run.get("sft_first"):
        tail += f", starting from {run['sft_first']} steps of SFT on {source} (every weight, `sft_first/`)"
    if c["optim"].get("cfg_distill_weight"):
        o = c["optim"]
        kind = "centred guided" if o.get("cfg_distill_center") else "guided"
        tail += (f", plus guidance distillation (the base's {kind} prediction at scale {o['cfg_distill_scale']} on "
                 f"the top {o['cfg_distill_window']:.0%} of the noise range, weight {o['cfg_distill_weight']})")
    if c["method"] == "sft":
        return f"sft on {source}, {tail}"
    if c["method"] == "dpo":
        return f"dpo on the preference pairs `{c['data']['pairs']}`, beta {c['optim']['dpo_beta']}, {tail}"
    anchor = (f", plus the SFT loss on {source} (weight {c['optim']['sft_weight']})"
              if data and c["optim"]["sft_weight"] > 0 else "")
    k = c["sampling"]["k"]
    k = f"K ~ U{{1..{k}}}" if c["sampling"]["k_distribution"] == "uniform" and k > 1 else f"K={k}"
    members = c["reward"].get("ensemble") or []
    reward = (f"the {c['reward']['ensemble_reduce']} of {1 + len(members)} RISD students (`{c['reward']['path']}`, "
              + ", ".join(f"`{m}`" for m in members) + ")") if members else "the RISD student"
    return (f"{c['method']} ({k}, T={c['sampling']['num_steps']}) with {reward}, {tail}, "
            f"KL weight {c['optim']['kl_weight']}{anchor}")


def _grid(out: Path, result: dict, specs: list[ModelSpec], held_out: list[str], seed: int = 0) -> tuple[Path, list]:
    """`comparison.png`: GRID_COLUMNS held-out prompts drawn at random (seeded), the first image of each per arm."""
    num = min(result["settings"]["num_images"], len(held_out))
    chosen = sorted(np.random.default_rng(seed).choice(num, size=min(GRID_COLUMNS, num), replace=False).tolist())
    rows, notes = {}, {}
    for spec in specs:
        images = load_samples(out / "compare" / "samples" / spec.name, max(chosen) + 1)[chosen]
        rows[spec.name] = images
        verdicts = [judge(image, held_out[i]) for image, i in zip(images, chosen)]
        notes[spec.name] = [("all four right", True) if not v.num_wrong else
                            (f"{v.num_wrong} of 4 wrong", False) if v.num_wrong > 2 else
                            ("wrong " + ", ".join(a for a, ok in v.correct.items() if not ok), False) for v in verdicts]
    prompts = [held_out[i] for i in chosen]
    return figures.sample_grid(rows, prompts, notes, out / "comparison.png"), prompts


def run_demo(out: str | Path = "outputs/demo", config: str = "configs/tinyworld_draft.yaml",
             base_model: str = "models/tinyworld/sft", reward: str = "models/tinyworld/student",
             num_eval: int = 200, overrides: tuple[str, ...] = (), eval_split: str = "test", log=print,
             sft_config: str = "configs/tinyworld_sft_lora.yaml", guidance: dict | None = GUIDANCE,
             extra_arms: tuple[ModelSpec, ...] = (), curve_images: int = 36, progress: bool = True,
             soup_seeds: tuple[int, ...] = (), sft_first: int = 0, workers: int | None = None) -> dict:
    """Train the arms, compare them on `num_eval` images of the held-out `eval_split` prompts, write the report.

    Args:
        overrides: `key=value` overrides of the reward arm's config (the SFT control follows its steps, batch,
            seed, checkpoints and LoRA settings).
        guidance: `GuidanceOptions` fields of the guidance arm (None: no guidance arm).
        extra_arms: more arms on the same prompts and seeds (`ModelSpec`, e.g. with its own `sampler`); they
            appear in every table and figure.
        curve_images: validation images per checkpoint for the training curves (validation prompts, cycled).
        soup_seeds: two or more training seeds: each trained arm is trained at every seed and is the average of the
            runs' weights (a model soup; needs `model.trainable: full`); the curves follow the first seed's runs.
            Empty: one run per arm at the config's seed.
        sft_first: steps of plain SFT on renders (every weight, the reward run's lr and batch) before each reward
            run, which starts from that model; the SFT control then trains as many steps in all. 0: none.
        workers: processes that train the runs side by side (`zr_align.recipes.arms`); 0: in this process, one
            after another. Every run trains at one thread either way, so the figures do not depend on this or on
            the machine's number of cores. None: one per run, at most one per core.
    """
    if eval_split not in ("validation", "test"):
        raise ValueError(f"eval_split must be 'validation' or 'test', got {eval_split!r}")
    _check_runs(tuple(soup_seeds), sft_first, config, overrides, workers)
    if workers is None:
        workers = min(os.cpu_count() or 1, 2 * max(1, len(soup_seeds)))
    out, start = Path(out), time.perf_counter()
    runs = train_arms(out, config, sft_config, base_model, reward, overrides, log, tuple(soup_seeds), sft_first,
                      workers, progress)
    reward_model = ZRewardModel.from_pretrained(reward)  # as stored: guidance, the curves, the tables' mean
    specs = [ModelSpec("base", base_model), *(trained_arm(name, run, base_model) for name, run in runs.items()),
             *([guidance_arm(base_model, reward_model, guidance, reward)] if guidance is not None else []), *extra_arms]
    log(f"[3/5] sampling and judging {num_eval} images per arm on the held-out {eval_split} prompts")
    result = compare_models(specs, out / "compare", prompts=f"tinyworld:{eval_split}", num_images=num_eval,
                            seed=EVAL_SEED, reward=reward_model, replace_stale=True, progress=progress)
    log("[4/5] training curves: every checkpoint on the validation prompts")
    validation = split_prompts(0).validation
    curve_prompts = [validation[i % len(validation)] for i in range(curve_images)]
    curves, base_point = {}, None
    for name, run in runs.items():  # the SFT control first: it starts from the base, whose point it computes
        first = run.get("sft_first", 0)
        points = checkpoint_curve(run["dir"], run["resolved"]["model"]["path"] if first else base_model,
                                  curve_prompts, reward_model, seed=CURVE_SEED, start=None if first else base_point,
                                  progress=progress, label=name)
        if first:  # the run's step 0 is its first stage's model, N steps after the base
            points = [{"step": 0, **base_point}] + [{**p, "step": p["step"] + first} for p in points]
        curves[name] = points
        base_point = {k: v for k, v in points[0].items() if k != "step"}
    log("[5/5] report")
    report = _report(out, result, runs, curves, specs, eval_split, curve_images)
    report["minutes_total"] = round((time.perf_counter() - start) / 60, 2)
    report["workers"] = workers
    _write(out, report, arms=report["arms"])
    log((out / "report.md").read_text())
    log(f"report: {out / 'report.html'}")
    return report


def _check_runs(soup_seeds: tuple[int, ...], sft_first: int, config: str, overrides: tuple[str, ...],
                workers: int | None = None) -> None:
    """A one-line `ValueError` before any training for soup seeds that are not two or more distinct seeds, a negative
    `sft_first` or `workers`, or soup seeds or `sft_first` with a LoRA run (a soup averages whole pipelines; the first
    stage writes one for the reward run to start from)."""
    if workers is not None and workers < 0:
        raise ValueError(f"workers must be >= 0 processes (0: train in this process), got {workers}")
    if soup_seeds and (len(soup_seeds) < 2 or len(set(soup_seeds)) != len(soup_seeds)):
        raise ValueError(f"soup seeds must be two or more distinct seeds, got {list(soup_seeds)}")
    if sft_first < 0:
        raise ValueError(f"sft_first must be >= 0 steps, got {sft_first}")
    reward_config = load_train_config(config, list(overrides))
    if reward_config.model.trainable != "full":
        if soup_seeds:
            raise ValueError("a soup of seeds averages whole pipelines: it needs model.trainable: full (a LoRA run's "
                             "factors do not average to its update)")
        if sft_first:
            raise ValueError("SFT first trains every weight and the reward run starts from that pipeline: it needs "
                             "model.trainable: full")


def _arm_rows(result: dict, runs: dict, specs: list[ModelSpec]) -> list[dict]:
    """One row per arm: how it was made, its judge accuracy and reward-model mean, GSB against the base."""
    vs_base = {p["candidate"]: p for p in result["pairs"] if p["reference"] == specs[0].name}
    rows = []
    for spec in specs:
        run = runs.get(spec.name)
        model = result["models"][spec.name]
        how = _describe(run) if run else spec.sampler_label if spec.sampler else "the shipped SFT baseline as it is"
        rows.append({"name": spec.name, "how": how,
                     "steps": len(run["metrics"]) + run.get("sft_first", 0) if run else 0,
                     "train_minutes": run["minutes"] if run else 0.0,
                     "lora": spec.lora, "weights": spec.lora or (spec.model if run else None),
                     "accuracy": model["accuracy"], "reward_mean": model["reward_mean"],
                     "mean_scores": model["summary"]["mean_scores"],
                     "artefacts": model["summary"]["artefacts"], "vs_base": vs_base.get(spec.name)})
    return rows


def _fmt(interval: dict, spec: str = ".3f") -> str:
    return f"{interval['value']:{spec}} [{interval['low']:{spec}}, {interval['high']:{spec}}]"


def _markdown(report: dict, arms: list[dict], pairs: list[dict]) -> str:
    ev, gsb = report["eval"], report["judge"]["gsb"]
    lines = ["| arm | training | GSB vs base: good / same / bad | net vs base [95% CI] | all four right | color | "
             "position | shape | size | reward-model mean |", "|---" * 10 + "|"]
    for arm in arms:
        v, a = arm["vs_base"], arm["accuracy"]
        gsb_cells = (f"{v['good']} / {v['same']} / {v['bad']} | {_fmt(v['net_interval'], '+.1%')}" if v else "- | -")
        training = f"{arm['steps']} steps, {arm['train_minutes']:.1f} min" if arm["steps"] else "-"
        lines.append(f"| {arm['name']} | {training} | {gsb_cells} | " + " | ".join(
            _fmt(a[k]) for k in ("all_correct", "color", "position", "shape", "size")) +
            f" | {_fmt(arm['reward_mean'])} |")
    how = "\n".join(f"- **{arm['name']}**: {arm['how']}" + (f" (`{arm['weights']}`)" if arm["weights"] else "")
                    for arm in arms)
    pair_rows = "\n".join(f"| {p['candidate']} vs {p['reference']} | {p['good']} | {p['same']} | {p['bad']} | "
                          f"{_fmt(p['net_interval'], '+.1%')} |" for p in pairs)
    pictures = [
        f"![Samples of {len(ev['grid_prompts'])} held-out prompts drawn at random: one row per arm, the prompt under "
        "each column, the judge's verdict under each image](comparison.png)", "",
        f"![Training curves: the reward model's mean and the judge's all-four-right rate on {report['curve_images']} "
        "images of the validation prompts at every checkpoint (step 0 is the base); thin line: the reward of the "
        "reward arm's training batches, 10-step mean](curves.png)", "",
        "![Per-attribute judge accuracy on the held-out prompts, 95% intervals over prompts](attributes.png)"]
    scores = "\n".join(f"| {arm['name']} | " + " | ".join(f"{s:.2f}" for s in arm["mean_scores"].values()) + " |"
                       for arm in arms)
    flags = list(arms[0]["artefacts"])
    artefacts = "\n".join(f"| {arm['name']} | " + " | ".join(f"{arm['artefacts'][f]:.2f}" for f in flags)
                          + " |" for arm in arms)
    ensemble = ", averaged with the other members of its ensemble" if report.get("reward_ensemble") else ""
    soups = (f", at the other seeds in `run_seedS/` and `sft_run_seedS/`, their averaged weights in `reward_soup/` and "
             f"`sft_soup/` (the curves follow seed {report['soup_seeds'][0]})" if report.get("soup_seeds") else "")
    logs = "; the console output of runs trained side by side in `logs/`" if report.get("workers") else ""
    return f"""# TinyWorld demo: reward fine-tuning against an SFT control, judged by the ground truth

{len(arms)} arms on the SFT baseline `{report['base_model']}`, compared on {ev['images']} images of the {ev['prompts']}
({ev['num_prompts']} prompts; image i shows prompt i mod {ev['num_prompts']} with noise seed {ev['noise_seed']} + i, the
same for every arm), scored by the ground-truth judge, not by the reward model. Intervals: 95% bootstrap over
prompts. Reward-model mean: the RISD student `{report['reward']}` as stored (for reference only: the reward arm
optimised it with its own dimension weights{ensemble}, the guidance arm followed its gradient). Wall time
{report['minutes_total']:.1f} min.

**GSB net preference of the reward-tuned model over the SFT baseline: {gsb['net']:+.1%}**
[{gsb['net_interval']['low']:+.1%}, {gsb['net_interval']['high']:+.1%}] (good {gsb['good']}, same {gsb['same']}, bad
{gsb['bad']}; tie band 0.2 of the overall judge score, so one attribute decides; the paper reports +41.3%).

{chr(10).join(lines)}

{how}

{chr(10).join(pictures)}

Every pair (later arm vs earlier arm):

| candidate vs reference | good | same | bad | net [95% CI] |
|---|---|---|---|---|
{pair_rows}

Mean judge scores:

| arm | {' | '.join(arms[0]['mean_scores'])} |
|---|{'---|' * len(arms[0]['mean_scores'])}
{scores}

Share of images with each artefact flag of the judge (blur, noise and colour shift cost realism; fragments and crop
plausibility; low contrast and clutter aesthetics):

| arm | {' | '.join(f.replace('_', ' ') for f in flags)} |
|---|{'---|' * len(flags)}
{artefacts}

Files beside this report: [report.json](report.json), [compare/compare.md](compare/compare.md) (the `zr-align compare`
tables), samples in `compare/samples/ARM/`, the runs in `run/` (reward-tuned) and `sft_run/` (SFT control){soups}{logs}.
"""


def _report(out: Path, result: dict, runs: dict, curves: dict, specs: list[ModelSpec], eval_split: str,
            curve_images: int) -> dict:
    """Phase 5: what report.json holds (with the keys of earlier demos); draws the figures."""
    arms, reward_run = _arm_rows(result, runs, specs), runs["reward-tuned"]
    grid, grid_prompts = _grid(out, result, specs, split_prompts(0).as_dict()[eval_split])
    base, tuned = (result["models"][name] for name in ("base", "reward-tuned"))
    rewards = [m["reward_mean"] for m in reward_run["metrics"] if m["reward_mean"] is not None]
    report = {
        "arms": arms, "pairs": result["pairs"], "curves": curves, "base_model": specs[0].model,
        "reward": reward_run["resolved"]["reward"]["path"],
        "reward_ensemble": reward_run["resolved"]["reward"].get("ensemble") or [],
        "judge": {"baseline": base["summary"], "tuned": tuned["summary"], "gsb": arms[2]["vs_base"]},
        "reward_model_mean": {"baseline": base["reward_mean"]["value"], "tuned": tuned["reward_mean"]["value"]},
        "training": {"steps": len(reward_run["metrics"]), "minutes": reward_run["minutes"],
                     "sft_minutes": runs["SFT-control"]["minutes"],
                     "reward_first_10": float(np.mean(rewards[:10])), "reward_last_10": float(np.mean(rewards[-10:]))},
        "eval": {"prompts": f"TinyWorld {eval_split} split (never trained on)",
                 "images": result["settings"]["num_images"],
                 "num_prompts": result["settings"]["num_prompts"], "noise_seed": EVAL_SEED,
                 "grid_prompts": grid_prompts},
        "soup_seeds": (reward_run.get("soup") or {}).get("seeds", []),
        "curve_images": curve_images, "figures": {"grid": grid.name, "curves": "curves.png",
                                                   "attributes": "attributes.png"},
    }
    first = reward_run.get("sft_first", 0)
    metrics = [{**m, "step": m["step"] + first} for m in reward_run["metrics"]]  # on the curves' step axis
    figures.training_curves(curves, metrics, out / "curves.png")
    figures.attribute_bars({arm["name"]: arm["accuracy"] for arm in arms}, out / "attributes.png")
    return report


def _write(out: Path, report: dict, arms: list[dict]) -> None:
    """report.json, report.md and the self-contained report.html (figures embedded)."""
    (out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    text = _markdown(report, arms, report["pairs"])
    (out / "report.md").write_text(text)
    pictures = {name: out / name for name in report["figures"].values()}
    (out / "report.html").write_text(figures.markdown_to_html(text, pictures, "TinyWorld demo report"))
