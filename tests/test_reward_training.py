"""Reward-model training on tiny TinyWorld data: every method runs and learns its objective, the teacher's
mechanics (rationale, marker, slot), cached RISD targets, resume, and errors."""

import json

import pytest
import torch

from zr_align.cli import main as cli_main
from zr_align.reward_training.config import RewardTrainConfig, RisdConfig
from zr_align.reward_training.data import RatedImages, collate
from zr_align.reward_training.teacher import ReasoningTeacher
from zr_align.reward_training.trainer import train_reward_model
from zr_align.rewards import ZRewardModel
from zr_align.tinyworld.reward_data import make_reward_data
from zr_align.tinyworld.reward_models import build_reward_model, initial_model


def train_tinyworld(config, **kwargs):
    """`train_reward_model`, starting from TinyWorld's random model when `init` is `tinyworld:...`."""
    return train_reward_model(config, model=initial_model(config), **kwargs)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("rdata")
    make_reward_data(root, "train", images_per_prompt=4, seed=0, num_prompts=4)
    return root / "rated.jsonl"


@pytest.fixture(scope="module")
def sft_teacher(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("sft")
    config = RewardTrainConfig(method="teacher_sft", output_dir=str(out), data=str(data), max_steps=30,
                               batch_size=8, lr=2e-3)
    return train_tinyworld(config, log=lambda *_: None)


def losses_of(out_dir):
    return [json.loads(line)["loss"] for line in (out_dir / "metrics.jsonl").read_text().splitlines()]


def test_teacher_sft_learns_rationales_and_scores(sft_teacher, data):
    records = [json.loads(line) for line in (sft_teacher.parent / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["token_nll"] < 0.5 * records[0]["token_nll"]
    teacher = ReasoningTeacher.from_pretrained(sft_teacher)
    batch = collate([RatedImages(data)[i] for i in range(2)])
    rollouts = teacher.generate(batch["images"], batch["prompts"], greedy=True)
    texts = rollouts.texts(teacher.tokenizer)
    # after 30 steps the greedy rationale already follows the data's vocabulary and stops at the marker
    assert texts[0].split()[0] == "size" and (rollouts.lengths < teacher.max_rationale_tokens).all()


@pytest.mark.parametrize("method", ["gdso", "grpo"])
def test_policy_methods_update_from_the_sft_teacher(method, sft_teacher, data, tmp_path):
    config = RewardTrainConfig(method=method, output_dir=str(tmp_path), init=str(sft_teacher), data=str(data),
                               max_steps=2, batch_size=4, lr=1e-3)
    path = train_tinyworld(config, log=lambda *_: None)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert all(r["grad_norm"] > 0 and not r["skipped"] for r in records)
    before = ZRewardModel.from_pretrained(sft_teacher).model.state_dict()
    after = ZRewardModel.from_pretrained(path).model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("method, init", [("reward_dance", "tinyworld:teacher"), ("student_sft", "tinyworld:student")])
def test_direct_methods_reduce_their_loss(method, init, data, tmp_path):
    config = RewardTrainConfig(method=method, output_dir=str(tmp_path), init=init, data=str(data), max_steps=25,
                               batch_size=8, lr=2e-3)
    path = train_tinyworld(config, log=lambda *_: None)
    values = losses_of(tmp_path)
    assert sum(values[-5:]) < sum(values[:5])
    model = ZRewardModel.from_pretrained(path)
    if method == "reward_dance":
        assert model.rubric.bin_texts == ("no", "yes") and model.rubric.bins == (1.0, 5.0)


@pytest.mark.parametrize("method", ["risd", "opd"])
def test_distillation_targets_are_cached_once(method, sft_teacher, data, tmp_path):
    risd = RisdConfig(teacher=str(sft_teacher), num_rationales=2)
    config = RewardTrainConfig(method=method, output_dir=str(tmp_path), init="tinyworld:student", data=str(data),
                               max_steps=15, batch_size=8, lr=2e-3, risd=risd)
    train_tinyworld(config, log=lambda *_: None)
    (cache,) = (data.parent / "teacher_targets").glob("*.pt")  # beside the data: RISD and OPD share it
    stored = torch.load(cache, weights_only=False)["targets"]
    assert stored.shape == (len(RatedImages(data)), 4, 9)
    assert torch.allclose(stored.sum(-1), torch.ones(stored.shape[:2]), atol=1e-5)
    mtime = cache.stat().st_mtime_ns
    config.max_steps = 16
    train_tinyworld(config, resume="latest", log=lambda *_: None)
    assert cache.stat().st_mtime_ns == mtime  # reused, not recomputed
    other = RewardTrainConfig(method="opd" if method == "risd" else "risd", output_dir=str(tmp_path / "other"),
                              init="tinyworld:student", data=str(data), max_steps=1, batch_size=8, risd=risd)
    train_tinyworld(other, log=lambda *_: None)
    assert cache.stat().st_mtime_ns == mtime  # the other distillation method reuses it too
    values = losses_of(tmp_path)
    assert sum(values[-5:]) < sum(values[:5])


def test_distillation_targets_follow_a_teacher_retrained_in_place(sft_teacher, data, tmp_path):
    """Retraining the teacher into the same folder must not reuse its predecessor's cached targets."""
    import shutil

    own = tmp_path / "data"
    shutil.copytree(data.parent, own, ignore=shutil.ignore_patterns("teacher_targets"))
    teacher = tmp_path / "teacher"
    shutil.copytree(sft_teacher, teacher)
    risd = RisdConfig(teacher=str(teacher), num_rationales=2)

    def distil(name):
        config = RewardTrainConfig(method="risd", output_dir=str(tmp_path / name), init="tinyworld:student",
                                   data=str(own / "rated.jsonl"), max_steps=1, batch_size=8, risd=risd)
        train_tinyworld(config, log=lambda *_: None)
        return {f.name: torch.load(f, weights_only=False)["targets"] for f in (own / "teacher_targets").glob("*.pt")}

    first = distil("a")
    model = ZRewardModel.from_pretrained(teacher)
    with torch.no_grad():
        for p in model.model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(0)))
    model.save_pretrained(teacher)  # the same folder, other weights
    second = distil("b")
    assert len(first) == 1 and len(second) == 2
    (new,) = set(second) - set(first)
    assert not torch.allclose(second[new], next(iter(first.values())))


def test_distillation_learns_unlabelled_images_too(sft_teacher, data, tmp_path):
    """`risd.unlabelled`: images with a prompt and no labels (a generator's samples) get the teacher's targets and
    are drawn into the student's batches beside the rated rows; the rated rows' targets are those of a run without
    them, and the cache tells the two apart."""
    import shutil

    from zr_align.reward_training.trainer import grouped_batch
    from zr_align.runs import step_generator

    own = tmp_path / "data"
    shutil.copytree(data.parent, own, ignore=shutil.ignore_patterns("teacher_targets"))
    rated = [json.loads(line) for line in (own / "rated.jsonl").read_text().splitlines()]
    unlabelled = tmp_path / "samples" / "samples.jsonl"  # other prompts' images, absolute paths, no labels
    unlabelled.parent.mkdir()
    unlabelled.write_text("".join(json.dumps({"image": str(own / r["image"]), "prompt": rated[-1 - i]["prompt"]})
                                  + "\n" for i, r in enumerate(rated[:6])))

    def distil(name, extra):
        risd = RisdConfig(teacher=str(sft_teacher), num_rationales=2, unlabelled=extra)
        config = RewardTrainConfig(method="risd", output_dir=str(tmp_path / name), init="tinyworld:student",
                                   data=str(own / "rated.jsonl"), max_steps=2, batch_size=8, risd=risd)
        train_tinyworld(config, log=lambda *_: None)
        return config

    distil("plain", None)
    (plain,) = (own / "teacher_targets").glob("*.pt")
    config = distil("joined", str(unlabelled))
    (joined,) = set((own / "teacher_targets").glob("*.pt")) - {plain}
    before = torch.load(plain, weights_only=False)["targets"]
    after = torch.load(joined, weights_only=False)["targets"]
    assert before.shape == (16, 4, 9) and after.shape == (22, 4, 9)
    assert torch.equal(after[:16], before)  # the rated rows come first, drawn as before
    assert torch.allclose(after[16:].sum(-1), torch.ones(6, 4), atol=1e-5)
    data_all = RatedImages(own / "rated.jsonl")
    assert data_all.add_unlabelled(unlabelled) == 6 and len(data_all) == 22
    by_prompt = {}
    for i, item in enumerate(data_all.items):
        by_prompt.setdefault(item["prompt"], []).append(i)
    drawn = {i for step in range(config.max_steps)
             for i in grouped_batch(by_prompt, config, step_generator(config.seed, step, 0))}
    assert drawn & set(range(16, 22))  # the run above trained on unlabelled rows (and its loss needed no labels)
    batch = collate([data_all[i] for i in (0, 17)])
    assert batch["labels"] is None and batch["mean"] is None and batch["images"].shape[0] == 2
    assert collate([data_all[0], data_all[1]])["labels"] is not None
    with pytest.raises(ValueError, match="risd.human_weight needs a human label on every row"):
        RewardTrainConfig(method="risd", data=str(data), risd=RisdConfig(teacher="t", unlabelled="u.jsonl",
                                                                         human_weight=0.5))
    with pytest.raises(ValueError, match="use it with method risd or opd, not student_sft"):
        RewardTrainConfig(method="student_sft", data=str(data), risd=RisdConfig(unlabelled="u.jsonl"))
    (tmp_path / "bad.jsonl").write_text(json.dumps({"image": str(own / rated[0]["image"])}) + "\n")
    with pytest.raises(ValueError, match="bad.jsonl line 1"):
        data_all.add_unlabelled(tmp_path / "bad.jsonl")


def test_resume_continues_exactly(data, tmp_path):
    def config(out, steps):
        return RewardTrainConfig(method="student_sft", output_dir=str(out), init="tinyworld:student",
                                 data=str(data), max_steps=steps, batch_size=4, checkpoint_every=2)

    straight = train_tinyworld(config(tmp_path / "a", 4), log=lambda *_: None)
    train_tinyworld(config(tmp_path / "b", 2), log=lambda *_: None)  # stopped after 2 steps
    resumed = train_tinyworld(config(tmp_path / "b", 4), resume="latest", log=lambda *_: None)
    a = ZRewardModel.from_pretrained(straight).model.state_dict()
    b = ZRewardModel.from_pretrained(resumed).model.state_dict()
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6


def test_teacher_without_rationale_template_is_refused(tmp_path):
    student = build_reward_model("student", teacher=False)
    with pytest.raises(ValueError, match="has no rationale template") as excinfo:
        ReasoningTeacher(student)
    assert "\n" not in str(excinfo.value)


def test_config_errors(data):
    with pytest.raises(ValueError, match="method must be one of"):
        RewardTrainConfig(method="dpo", data=str(data))
    with pytest.raises(ValueError, match="method risd needs risd.teacher"):
        RewardTrainConfig(method="risd", data=str(data))
    with pytest.raises(ValueError, match="gdso starts from an SFT teacher"):
        RewardTrainConfig(method="gdso", data=str(data))


def test_reward_train_cli(data, tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text(f"method: student_sft\ninit: tinyworld:student\ndata: {data}\noutput_dir: {tmp_path / 'o'}\n"
                      "max_steps: 2\nbatch_size: 4\n")
    assert cli_main(["reward", "train", "--config", str(config)]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["model"].endswith("model")
