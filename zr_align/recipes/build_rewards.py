"""Rebuild TinyWorld's reward models: data, the teacher (SFT -> GDSO), the students (RISD), the baselines, and
the comparison table on held-out pairs by kind (GDSO and RISD of the Z-Reward paper; README: "Training reward models").

    zr-align tinyworld build-rewards [--work-dir outputs/tinyworld_rewards] [--steps-scale 1.0] [--reuse]
                                     [--no-baselines]

1. Data: the train split's rated images from the perception recipe (0-4 wrong attributes uniformly, independent
   artefacts, 12% SFT-generator samples; `reward_data.make_reward_data(recipe="perception")`), and evaluation
   sets of pairs by kind for the validation split (to choose) and the test split (to report)
   (`reward_eval.make_eval_set`).
2. `configs/reward/tinyworld_*.yaml` in the order of `RUNS`: teacher_sft (its reading accuracy on validation
   images logged every `eval_every` steps) -> gdso, grpo; reward_dance; then the better teacher on the
   validation pairs is chosen (or the one `teacher_choice` names), and the students start from it: student_sft,
   risd, opd at one budget, and risd_long, the shipped student.
3. Every model evaluated on the test pairs; the table goes to `docs/tinyworld_rewards.md` and `.json`.
4. The chosen teacher and risd_long are copied to `models/tinyworld/teacher` and `.../student` (or one of them:
   `ship`; `make tinyworld` takes the student from this recipe and the teacher from a build with free layouts,
   more generator samples and the spatial rotary layout, docs/tinyworld_rewards.md).

`baselines=False` (`--no-baselines`, what `make tinyworld` runs) trains only the `SHIPPED` runs, the ones the
shipped weights come from (with `ship=("teacher",)` not even the student: `planned_runs`), and leaves the table in
`docs/` as it is (its report goes to the work dir); a later run with `--reuse` and without the flag adds the
baselines and writes the whole table (`make tinyworld-table`).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from ..runs import environment

ROOT = Path(__file__).resolve().parents[2]
# (run name, config file under configs/reward/), in training order
RUNS = [
    ("teacher_sft", "tinyworld_teacher_sft.yaml"),
    ("gdso", "tinyworld_gdso.yaml"),
    ("grpo", "tinyworld_grpo.yaml"),
    ("reward_dance", "tinyworld_reward_dance.yaml"),
    ("student_sft", "tinyworld_student_sft.yaml"),
    ("risd", "tinyworld_risd.yaml"),
    ("opd", "tinyworld_opd.yaml"),
    ("risd_long", "tinyworld_risd_long.yaml"),  # the shipped student
]
TEACHERS = ("teacher_sft", "gdso", "grpo")
CANDIDATE_TEACHERS = ("teacher_sft", "gdso")  # the runs a build may ship as its teacher; teacher_sft wins a tie
# How the shipped teacher is chosen (`pick_teacher`): on the validation pairs, or one of the runs named.
TEACHER_CHOICES = ("validation", *CANDIDATE_TEACHERS)
STUDENTS = ("student_sft", "risd", "opd", "risd_long")  # they start from the chosen teacher
SHIPPED = ("teacher_sft", "gdso", "risd_long")  # the runs behind models/tinyworld/{teacher,student}


def planned_runs(baselines: bool, ship: tuple[str, ...]) -> list[tuple[str, str]]:
    """`(name, config file)` of the runs a build trains, in order: every run of `RUNS` with `baselines`, else
    only the `SHIPPED` ones, and of those no student when only the teacher ships (`--teacher-only`: the RISD
    student, about 40% of such a build's training time, would be thrown away)."""
    if baselines:
        return list(RUNS)
    return [(name, file) for name, file in RUNS
            if name in SHIPPED and ("student" in ship or name not in STUDENTS)]


def run_config(name: str, file: str, work: Path, steps_scale: float, seed: int, log, reuse: bool = False,
               on_eval=None, teacher: str | None = None, teacher_init: str | None = None):
    from ..reward_training.config import RewardTrainConfig
    from ..reward_training.trainer import train_reward_model
    from ..runs import load_config
    from ..tinyworld.reward_models import initial_model

    config = load_config(ROOT / "configs" / "reward" / file, (), RewardTrainConfig)
    overrides = {
        "output_dir": str(work / name),
        "data": str(work / "data" / "train" / "rated.jsonl"),
        "max_steps": max(1, round(config.max_steps * steps_scale)),
        "seed": seed,
    }
    if not config.init.startswith("tinyworld:"):  # teachers refine the SFT teacher, students start from the chosen one
        overrides["init"] = str(work / ((teacher or "gdso") if config.role == "student" else "teacher_sft") / "model")
    if teacher_init and name == "teacher_sft":  # another random start for the teacher (e.g. its rotary layout)
        overrides["init"] = teacher_init
    if config.vision_init:
        overrides["vision_init"] = str(work / "teacher_sft" / "model")
    if config.method in ("risd", "opd"):
        config.risd.teacher = str(work / (teacher or "gdso") / "model")
    for key, value in overrides.items():
        setattr(config, key, value)
    config.__post_init__()
    if reuse and (work / name / "model" / "zreward_config.json").is_file():
        log(f"reusing {work / name / 'model'}")
        return work / name / "model", _minutes_of(work / name) * 60
    start = time.perf_counter()
    path = train_reward_model(config, log=log, on_eval=on_eval, model=initial_model(config))
    return path, time.perf_counter() - start


def _minutes_of(run: Path) -> float:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return sum(json.loads(line)["seconds"] for line in lines) / 60


def reading_hook(eval_dir, limit: int = 160):
    """`on_eval` hook of the trainer: a teacher's greedy reading accuracy on the first `limit` images of an
    evaluation set (per check; students and RewardDance have no rationale and report nothing)."""
    from ..reward_training.teacher import ReasoningTeacher
    from ..tinyworld.reward_eval import reading_accuracy

    def hook(step, model):
        if not model.config.teacher:
            return {}
        return reading_accuracy(ReasoningTeacher(model), eval_dir, limit=limit)

    return hook


def evaluate_reward(path: Path, eval_dir: Path, teacher: bool, num_rationales: int) -> dict:
    """Accuracy per pair kind on an evaluation set; for a teacher greedy and sampled (x N), plus its reading."""
    from ..reward_training.evaluate import load_scorer
    from ..reward_training.teacher import ReasoningTeacher
    from ..tinyworld.reward_eval import (
        ARTEFACT_KINDS,
        evaluate_kinds,
        reading_accuracy,
        score_eval_images,
    )

    results = {}
    modes = [("greedy", 1), (f"sample x{num_rationales}", num_rationales)] if teacher else [("", None)]
    for label, n in modes:
        options = {} if n is None else {"mode": "greedy" if n == 1 else "sample", "num_rationales": n}
        start = time.perf_counter()
        rewards = score_eval_images(load_scorer(path, **options), eval_dir)
        results[label or "student"] = {**evaluate_kinds(rewards, eval_dir),
                                       "images_per_second": round(len(rewards) / (time.perf_counter() - start), 1)}
    if teacher:
        model = ReasoningTeacher.from_pretrained(path)
        results["reading_renders"] = reading_accuracy(model, eval_dir, sources=("render", "wrong_"))
        results["reading_generator"] = reading_accuracy(model, eval_dir, sources=("sft_sample",))
        results["reading_artefacts"] = reading_accuracy(model, eval_dir, sources=ARTEFACT_KINDS)
    return results


def build_reward_models(
    work_dir: str | Path = "outputs/tinyworld_rewards",
    out_dir: str | Path = "models/tinyworld",
    sft_model: str | None = "models/tinyworld/sft",
    images_per_prompt: int = 80,
    steps_scale: float = 1.0,
    num_rationales: int = 4,
    seed: int = 0,
    docs: str | Path | None = "docs",
    log=print,
    reuse: bool = False,
    baselines: bool = True,
    artefact_rates: dict[str, float] | None = None,
    ship: tuple[str, ...] = ("teacher", "student"),
    sft_fraction: float = 0.12,
    free_layout: float = 0.0,
    free_look: float = 0.0,
    sft_swap: float = 0.0,
    decoder_roundtrip: float = 0.0,
    raw_artefacts: tuple[str, ...] = (),
    teacher_init: str | None = None,
    teacher_choice: str = "validation",
) -> dict:
    """Data, every reward model of `RUNS` (only the `SHIPPED` ones without `baselines`), the table per pair kind on the
    test-split evaluation set, and the shipped teacher (the better of teacher_sft and gdso on the *validation* set) and
    RISD student. `artefact_rates`: the training data's artefact mix (default `reward_data.ARTEFACT_RATES`, the shipped
    one); `sft_fraction` its share of SFT-generator samples and `free_layout` its share of objects drawn at any size and
    place, `free_look` the share of those drawn between the palette's colours or the prototype shapes
    (`reward_data.perception_image`), `sft_swap` the share of the SFT samples drawn from a prompt one attribute away
    from the rated one, `decoder_roundtrip` the share of drawn images passed through the SFT model's VAE before they are
    judged (`make_reward_data`) but for those with an artefact of `raw_artefacts`; `teacher_init` the teacher SFT run's
    `init` instead of its config's (e.g. "tinyworld:teacher", the spatial rotary layout). `ship`: which of the two are
    copied to `out_dir` (the members of the reward ensemble ship their student only). `teacher_choice`: "validation"
    (the better teacher on the build's validation pairs) or the run that ships, "teacher_sft" or "gdso"
    (`pick_teacher`)."""
    sft = sft_model if sft_model and Path(sft_model, "model_index.json").is_file() else None
    _check_recipe(ship, teacher_init, teacher_choice, sft_fraction, artefact_rates, free_layout, free_look, sft_swap,
                  decoder_roundtrip, sft is not None, raw_artefacts=raw_artefacts)  # before an hour of work
    work, out = Path(work_dir), Path(out_dir)
    log(f"reward data (SFT samples from {sft})")
    clock = _StageClock()
    lap, minutes = clock.lap, clock.minutes
    data_stats = make_data(work / "data", sft, images_per_prompt, seed, reuse, sft_fraction=sft_fraction,
                           artefact_rates=artefact_rates, free_layout=free_layout, free_look=free_look,
                           sft_swap=sft_swap, decoder_roundtrip=decoder_roundtrip, raw_artefacts=raw_artefacts)
    lap("data")
    runs = planned_runs(baselines, ship)
    times, hook = {}, reading_hook(work / "data" / "eval_validation")

    def train(part: list[tuple[str, str]], teacher: str | None) -> None:
        for name, file in part:
            log(f"== {name}")
            _, times[name] = run_config(name, file, work, steps_scale, seed, log, reuse, hook, teacher, teacher_init)
            lap(f"training {name}")

    train([run for run in runs if run[0] not in STUDENTS], None)  # `RUNS` lists the students last
    shipped_teacher = choose_teacher(work, num_rationales, log, teacher_choice)  # the students start from it
    lap("choosing the teacher")
    train([run for run in runs if run[0] in STUDENTS], shipped_teacher)

    results = {}
    for name, _ in runs:
        results[name] = evaluate_reward(work / name / "model", work / "data" / "eval_test", name in TEACHERS,
                                        num_rationales)
        results[name]["train_minutes"] = round(times[name] / 60, 1)
        log(f"{name}: {results[name]}")
    lap("evaluation")
    minutes["total"] = round(sum(minutes.values()), 2)
    log(f"wall minutes: {minutes}")
    report = {"data": data_stats, "shipped_teacher": shipped_teacher, "results": results, "minutes": minutes,
              "environment": environment()}  # what a bit-for-bit rerun depends on besides code and data
    for folder in [work] + ([Path(docs)] if docs and baselines else []):  # docs/ holds the whole table only
        folder.mkdir(parents=True, exist_ok=True)
        Path(folder, "tinyworld_rewards.json").write_text(json.dumps(report, indent=1, default=float))
        Path(folder, "tinyworld_rewards.md").write_text(format_report(report, images_per_prompt, steps_scale, seed))
    ship_models(work, out, shipped_teacher, ship)
    return report


class _StageClock:
    """Wall minutes per stage of one build (a reused stage costs ~0), reported beside the table."""

    def __init__(self):
        self.minutes: dict[str, float] = {}
        self._start = time.perf_counter()

    def lap(self, stage: str) -> None:
        """Add the minutes since the last lap to `stage`."""
        now = time.perf_counter()
        self.minutes[stage] = self.minutes.get(stage, 0.0) + round((now - self._start) / 60, 2)
        self._start = now


def make_data(data_dir: Path, sft: str | None, images_per_prompt: int, seed: int, reuse: bool, **recipe) -> dict:
    """The evaluation sets (validation, to choose; test, to report) and the training data from the perception
    recipe (`recipe`: `make_reward_data`'s keywords), each kept when `reuse` finds it; their stats by name."""
    from ..tinyworld.reward_data import make_reward_data
    from ..tinyworld.reward_eval import make_eval_set

    data_stats = {}
    for name, make in (
        ("eval_validation", lambda d: make_eval_set(d, "validation", seed + 2, sft, pairs_per_kind=90,
                                                    generator_pairs=200, samples_per_prompt=12)),
        ("eval_test", lambda d: make_eval_set(d, "test", seed + 1, sft)),
        ("train", lambda d: make_reward_data(d, "train", images_per_prompt, seed, sft_model=sft,
                                             recipe="perception", **recipe)),
    ):
        stats_file = data_dir / name / "stats.json"
        data_stats[name] = (json.loads(stats_file.read_text()) if reuse and stats_file.is_file()
                            else make(data_dir / name))
    return data_stats


def ship_models(work: Path, out: Path, teacher_run: str, ship: tuple[str, ...] = ("teacher", "student")) -> None:
    """Copy the chosen teacher (`teacher_run`'s model) to `out/teacher` and the RISD student (risd_long's) to
    `out/student`, each only if named in `ship`; a folder already there is replaced, any other is left alone."""
    _check_ship(ship)
    for source, target in ((teacher_run, "teacher"), ("risd_long", "student")):
        if target not in ship:
            continue
        shutil.rmtree(out / target, ignore_errors=True)
        shutil.copytree(work / source / "model", out / target)


def _check_recipe(ship: tuple[str, ...], teacher_init: str | None, teacher_choice: str, *mix,
                  raw_artefacts: tuple[str, ...] = ()) -> None:
    """Refuse what ships, the teacher's start and choice, or the data mix (`reward_data.check_mix`'s arguments) in
    one line."""
    from ..tinyworld.reward_data import check_mix
    from ..tinyworld.reward_models import parse_init

    _check_ship(ship)
    check_mix(*mix, raw_artefacts=raw_artefacts)
    if teacher_init is not None and parse_init(teacher_init)[0] != "teacher":
        raise ValueError(f"teacher_init {teacher_init!r} is a student; use tinyworld:teacher[:LAYOUT]")
    _check_teacher_choice(teacher_choice)


def _check_ship(ship: tuple[str, ...]) -> None:
    unknown = sorted(set(ship) - {"teacher", "student"})
    if unknown:
        raise ValueError(f"ship takes 'teacher' and 'student'; got {unknown[0]!r}")


def artefact_mix(changes: list[str]) -> dict[str, float] | None:
    """The training data's artefact mix with `KIND=RATE` changes over `reward_data.ARTEFACT_RATES` (None: none).

    Raises:
        `ValueError`: one line naming a malformed change, an unknown corruption or a rate outside [0, 1].
    """
    from ..tinyworld.corrupt import CORRUPTIONS, WRONG_ATTRIBUTE
    from ..tinyworld.reward_data import ARTEFACT_RATES

    if not changes:
        return None
    rates, kinds = dict(ARTEFACT_RATES), list(CORRUPTIONS)
    for change in changes:
        kind, sep, value = change.partition("=")
        try:
            rate = float(value) if sep else float("nan")
        except ValueError:
            rate = float("nan")
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"--artefact-rate {change!r}: give KIND=RATE with a rate in [0, 1], e.g. object_cast=0.2")
        if kind not in CORRUPTIONS or kind in WRONG_ATTRIBUTE:
            artefacts = ", ".join(k for k in CORRUPTIONS if k not in WRONG_ATTRIBUTE)
            raise ValueError(f"--artefact-rate {change!r}: unknown artefact {kind!r}; choose one of {artefacts}")
        if kind in rates:
            rates[kind] = rate
            continue
        # a kind the shipped mix lacks goes right after its predecessor in `CORRUPTIONS` (the draw order matters)
        before = [k for k in kinds[: kinds.index(kind)] if k in rates]
        at = list(rates).index(before[-1]) + 1 if before else 0
        items = list(rates.items())
        rates = dict([*items[:at], (kind, rate), *items[at:]])
    return rates


def choose_teacher(work: Path, num_rationales: int, log, choice: str = "validation") -> str:
    """The teacher that ships and that the students start from: teacher_sft or gdso by `pick_teacher`, after the
    validation pairs of both are logged (greedy, all kinds)."""
    from ..reward_training.evaluate import load_scorer
    from ..tinyworld.reward_eval import evaluate_kinds, score_eval_images

    validation = work / "data" / "eval_validation"
    scores = {name: evaluate_kinds(score_eval_images(load_scorer(work / name / "model"), validation), validation)["all"]
              for name in CANDIDATE_TEACHERS}
    log(f"validation accuracy of the teachers: {scores}")
    return pick_teacher(scores, choice)


def pick_teacher(scores: dict[str, float], choice: str = "validation") -> str:
    """`choice` "validation": the teacher with the higher validation accuracy in `scores` (teacher_sft on a tie);
    "teacher_sft" or "gdso": that one, whatever the scores. Why name one: the build's validation set holds 90-120
    pairs per kind, where teachers this close trade places by chance; on a set six times larger GDSO ranked above its
    SFT start in each of the four teacher-only builds of session 25's recipes (docs/tinyworld_rewards.md, "Object casts
    in the teacher's data"), which is why `make tinyworld`'s teacher build names gdso."""
    _check_teacher_choice(choice)
    return max(scores, key=scores.get) if choice == "validation" else choice


def _check_teacher_choice(choice: str) -> None:
    if choice not in TEACHER_CHOICES:
        raise ValueError(f"teacher_choice must be one of {', '.join(TEACHER_CHOICES)}, got {choice!r}")


def format_report(report: dict, images_per_prompt: int, steps_scale: float, seed: int) -> str:
    from ..tinyworld.reward_eval import KINDS

    lines = ["# TinyWorld reward models on held-out pairs", "",
             (f"Generated by `zr-align tinyworld build-rewards` (images per prompt {images_per_prompt}, steps scale "
             f"{steps_scale}, seed {seed}); test-split prompts never seen in training; ground truth = the judge. "
             f"Shipped teacher: {report['shipped_teacher']}."), "",
             "| model | mode | " + " | ".join(KINDS) + " | all | img/s | train min |",
             "|---|---|" + "---|" * (len(KINDS) + 3)]
    for name, result in report["results"].items():
        for mode, row in result.items():
            if not isinstance(row, dict) or mode.startswith("reading"):
                continue
            cells = [f"{row.get(k, float('nan')):.3f}" for k in (*KINDS, "all")]
            lines.append(f"| {name} | {mode} | " + " | ".join(cells) + f" | {row['images_per_second']} | "
                         f"{result['train_minutes']} |")
    if report.get("minutes"):
        lines += ["", "Wall minutes of this build per stage (" + ", ".join(f"{k} {v}" for k, v in
                                                                    report["minutes"].items()) + ")."]
    lines += ["", ("Reading accuracy of the teachers' greedy rationales (share of images where a check says what "
              "the judge's says; attributes: value and verdict):"), ""]
    for name, result in report["results"].items():
        for part in ("reading_renders", "reading_generator", "reading_artefacts"):
            if part in result:
                lines.append(f"- {name}, {part[8:]}: " + ", ".join(f"{k} {v:.3f}" for k, v in result[part].items()))
    return "\n".join(lines) + "\n"
