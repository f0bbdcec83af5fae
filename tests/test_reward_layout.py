"""The joint layout (one sequence per image for every rubric dimension), the teacher's segment forcing, batched
vision attention, and the training options that came with them (soft score labels, cosine lr, vision init)."""

import json

import pytest
import torch

from zr_align.reward_training.config import RewardTrainConfig
from zr_align.reward_training.data import RatedImages, collate
from zr_align.reward_training.objectives import TeacherSFT, check_token_weights, score_slot_loss
from zr_align.reward_training.teacher import ReasoningTeacher, SegmentForcing
from zr_align.reward_training.trainer import copy_vision_tower, train_reward_model
from zr_align.rewards.layout import assemble
from zr_align.runs import lr_factor
from zr_align.tinyworld.reward_data import make_reward_data
from zr_align.tinyworld.reward_models import build_reward_model, initial_model


def train_tinyworld(config, **kwargs):
    """`train_reward_model`, starting from TinyWorld's random model when `init` is `tinyworld:...`."""
    return train_reward_model(config, model=initial_model(config), **kwargs)


PROMPTS = ["a large red circle on the left", "a small blue square at the top", "a large green triangle in the center"]


def images(n=3, seed=0):
    return torch.rand(n, 3, 64, 64, generator=torch.Generator().manual_seed(seed))


def test_assemble_positions():
    out = assemble([[1, 2], [3]], headers=[[10], [11]], marker=[20, 21], rationales=[[[5, 6], []], [[7], [8, 9]]],
                   pad_id=0)
    assert out.input_ids.tolist() == [[1, 2, 10, 5, 6, 20, 21, 11, 20, 21],
                                      [3, 10, 7, 20, 21, 11, 8, 9, 20, 21]]
    assert out.starts.tolist() == [[3, 8], [2, 6]]
    assert out.lengths.tolist() == [[2, 0], [1, 2]]
    assert out.slots.tolist() == [[6, 9], [4, 9]]  # the last marker token of each segment
    assert out.attention_mask.sum(1).tolist() == [10, 10]


def test_joint_student_equals_separate_passes_over_its_own_rows():
    """The joint student reads dimension d at the end of its segment: the same logits as a pass over the sequence
    cut right after that segment (causal attention), so later segments cannot leak into earlier scores."""
    torch.manual_seed(0)
    rm = build_reward_model("student", teacher=False)
    x = images()
    logits = rm.forward_logits(x, PROMPTS)  # (B, D, K)
    assert logits.shape == (3, 4, 9)
    vision = rm.preprocessor(x)
    headers, marker = rm.segment_headers(), rm.marker_ids(rm.config.joint_marker)
    for d in range(4):
        rows = assemble(rm.prefix_ids(PROMPTS, vision.image_text), headers[: d + 1], marker, None,
                        rm.tokenizer.pad_token_id)
        hidden = rm.model.model(input_ids=rows.input_ids, attention_mask=rows.attention_mask,
                                **rm.pixel_inputs(vision, 1),
                                **rm.family.extra_text_inputs(rows.input_ids, rm.image_token_id)).last_hidden_state
        alone = rm.bin_logits(hidden[torch.arange(3), rows.slots[:, d]])
        torch.testing.assert_close(alone, logits[:, d], atol=1e-5, rtol=1e-5)


def test_joint_student_pixel_gradient_and_one_sequence_per_image():
    rm = build_reward_model("student", teacher=False)
    calls = []
    language_model = rm.model.model.language_model
    hook = language_model.register_forward_hook(lambda m, a, k, o: calls.append(k["inputs_embeds"]), with_kwargs=True)
    x = images().requires_grad_(True)
    rm(x, PROMPTS).reward.sum().backward()
    hook.remove()
    assert calls[0].shape[0] == 3  # one row per image, not per (image, dimension)
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    per_dim = build_reward_model("student", teacher=False, layout="per_dimension")
    assert per_dim(images(), PROMPTS).reward.shape == (3,)


def test_segment_forcing_state_machine():
    forcing = SegmentForcing(headers=[[10], [11]], marker=[20, 21], max_tokens=3, pad_id=0, prompt_width=0)
    walk = forcing._walk
    assert walk([5]) == (None, [[5]])  # free rationale
    assert walk([5, 6, 7])[0] == 20  # budget reached: the marker starts
    assert walk([5, 20])[0] == 21  # the marker is completed
    assert walk([5, 20, 21])[0] == 11  # then the next dimension's header
    assert walk([5, 20, 21, 11])[0] is None
    assert walk([5, 20, 21, 11, 8, 20, 21])[0] == 0  # after the last segment: padding (the end)
    assert forcing.parse([5, 20, 21, 11, 8, 9, 20, 21, 0, 0]) == [[5], [8, 9]]


def test_teacher_generation_keeps_the_layout_and_matches_teacher_forcing():
    torch.manual_seed(0)
    teacher = ReasoningTeacher(build_reward_model("teacher", teacher=True))
    x = images()
    rollouts = teacher.generate(x, PROMPTS, num=2, generator=torch.Generator().manual_seed(1))
    assert rollouts.tokens.shape[0] == 3 * 4 * 2
    assert (rollouts.lengths <= teacher.max_rationale_tokens).all()
    stop = teacher.marker_ids[0]  # a rationale ends at the marker's first token
    assert not any(stop in t[:n].tolist() for t, n in zip(rollouts.tokens, rollouts.lengths))
    out = teacher.forward_rollouts(x, PROMPTS, rollouts)
    assert out.slot_logits.shape == (24, 9) and torch.isfinite(out.token_logprobs).all()
    # greedy generation picks, at every free step, the token teacher forcing finds most likely
    greedy = teacher.generate(x, PROMPTS, greedy=True)
    forced = teacher.forward_rollouts(x, PROMPTS, greedy)
    assert (forced.token_logprobs * forced.mask).sum() > (out.token_logprobs * out.mask).sum() / 2


def test_batched_vision_attention_is_exact():
    from transformers.models.qwen2_vl.modeling_qwen2_vl import VisionAttention

    rm = build_reward_model("teacher", teacher=False)
    x = images(4).requires_grad_(True)
    fast = rm(x, PROMPTS + PROMPTS[:1]).reward
    (grad_fast,) = torch.autograd.grad(fast.sum(), x)
    swapped = 0
    for module in rm.model.modules():
        if type(module) is VisionAttention:
            module.forward = module._stock_forward
            swapped += 1
    assert swapped == 3
    slow = rm(x, PROMPTS + PROMPTS[:1]).reward
    (grad_slow,) = torch.autograd.grad(slow.sum(), x)
    torch.testing.assert_close(fast, slow, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(grad_fast, grad_slow, atol=1e-6, rtol=1e-5)


@pytest.fixture(scope="module")
def perception_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("pdata")
    stats = make_reward_data(root, "train", images_per_prompt=20, seed=0, num_prompts=5, recipe="perception")
    return root, stats


def test_perception_recipe_balances_yes_and_no(perception_data):
    root, stats = perception_data
    assert stats["recipe"] == "perception" and stats["images"] == 100
    wrong = [stats["images_by_source"].get(f"wrong{k}", 0) for k in range(5)]
    assert min(wrong) >= 10  # 0-4 wrong attributes drawn uniformly
    rated = [json.loads(line) for line in (root / "rated.jsonl").read_text().splitlines()]
    verdicts = [w for r in rated for w in r["rationale"]["alignment"].split() if w in ("yes", "no")]
    assert 0.35 < verdicts.count("yes") / len(verdicts) < 0.65  # "copy the prompt, say yes" scores badly
    assert sum(k in stats["images_by_source"] for k in ("blur", "noise", "color_shift")) == 3
    assert "object_cast" not in stats["images_by_source"]  # not in the shipped mix (`ARTEFACT_RATES`)
    with pytest.raises(ValueError, match="unknown recipe 'clean'"):
        make_reward_data(root / "x", "train", 4, 0, recipe="clean")


def test_perception_recipe_takes_its_artefact_mix(tmp_path):
    stats = make_reward_data(tmp_path / "casts", "train", images_per_prompt=10, seed=0, num_prompts=2,
                             recipe="perception", artefact_rates={"object_cast": 1.0})
    assert stats["images_by_source"]["object_cast"] == 20 and "blur" not in stats["images_by_source"]
    rated = [json.loads(line) for line in (tmp_path / "casts" / "rated.jsonl").read_text().splitlines()]
    assert sum("shift yes" in r["rationale"]["realism"] for r in rated) >= 8  # casts drawn over both sides of the flag
    assert sum("shift no" in r["rationale"]["realism"] for r in rated) >= 2
    with pytest.raises(ValueError, match="wrong_color is not an artefact corruption"):
        make_reward_data(tmp_path / "x", "train", 4, 0, num_prompts=1, recipe="perception",
                         artefact_rates={"wrong_color": 0.5})


def test_free_layouts_teach_corners_and_both_sizes(tmp_path):
    """Clean layouts only ever show five cells and two sizes; free ones put the object anywhere at any size, and the
    rationale says what the judge reads there (a corner, the other size), whatever the prompt asked."""
    stats = make_reward_data(tmp_path / "free", "train", images_per_prompt=20, seed=0, num_prompts=3,
                             recipe="perception", free_layout=1.0, free_look=0.5)
    assert stats["free_layout"] == 1.0 and stats["images_by_source"]["free"] == 60
    assert stats["free_look"] == 0.5 and 18 <= stats["images_by_source"]["look"] <= 42
    rated = [json.loads(line) for line in (tmp_path / "free" / "rated.jsonl").read_text().splitlines()]
    alignment = [r["rationale"]["alignment"] for r in rated]
    assert sum("position corner no" in a for a in alignment) >= 6  # the corner cells, never drawn by `layout`
    assert sum("size small" in a for a in alignment) >= 10 and sum("size large" in a for a in alignment) >= 10
    shipped = make_reward_data(tmp_path / "shipped", "train", images_per_prompt=20, seed=0, num_prompts=3,
                               recipe="perception")
    assert "free" not in shipped["images_by_source"] and "free_layout" not in shipped and "free_look" not in shipped
    assert not any("corner" in json.loads(line)["rationale"]["alignment"]
                   for line in (tmp_path / "shipped" / "rated.jsonl").read_text().splitlines())
    with pytest.raises(ValueError, match=r"free_layout must be in \[0, 1\], got 1.5"):
        make_reward_data(tmp_path / "x", "train", 4, 0, num_prompts=1, recipe="perception", free_layout=1.5)


def test_soft_score_label_is_cross_entropy_to_the_histogram(perception_data):
    root, _ = perception_data
    batch = collate([RatedImages(root / "rated.jsonl")[i] for i in range(4)])
    dims = ("alignment", "realism", "aesthetics", "plausibility")
    bins = torch.linspace(1, 5, 9)
    logits = torch.randn(4, 4, 9)
    labels = torch.stack([batch["labels"][d] for d in dims], 1)
    expected = -(labels * logits.log_softmax(-1)).sum(-1).mean()
    config = RewardTrainConfig(data=str(root / "rated.jsonl"))
    torch.testing.assert_close(score_slot_loss(logits, batch, dims, bins, config), expected)
    config.dimension_weights = {"alignment": 3.0}
    weighted = (-(labels * logits.log_softmax(-1)).sum(-1) * torch.tensor([3.0, 1, 1, 1])).sum(-1).mean() / 6
    torch.testing.assert_close(score_slot_loss(logits, batch, dims, bins, config), weighted)
    config.dimension_weights = {"style": 1.0}
    with pytest.raises(ValueError, match="dimension_weights names"):
        score_slot_loss(logits, batch, dims, bins, config)


def test_check_weights_scale_the_tokens_of_their_checks_only(perception_data):
    root, _ = perception_data
    teacher = ReasoningTeacher(build_reward_model("teacher", teacher=True, seed=1))
    texts = ["size small yes color red no shape circle yes position left no", "blur no noise no shift yes"]
    rollouts = teacher.encode_rationales(texts)  # the ids the loss sees: no second tokenisation
    weights = check_token_weights(rollouts, teacher.tokenizer, {"shape": 3.0, "shift": 4.0})
    assert weights[0].tolist() == [1, 1, 1, 1, 1, 1, 3, 3, 3, 1, 1, 1]  # "shape circle yes", up to its verdict
    assert weights[1, :6].tolist() == [1, 1, 1, 1, 4, 4]
    assert torch.equal(check_token_weights(rollouts, teacher.tokenizer, None), torch.ones(2, 12))

    batch = collate([RatedImages(root / "rated.jsonl")[i] for i in range(4)])
    config = RewardTrainConfig(data=str(root / "rated.jsonl"))
    plain, metrics = TeacherSFT(teacher, config).loss(batch, None)
    config.check_weights = {"shift": 1.0}  # weight 1 changes nothing
    torch.testing.assert_close(TeacherSFT(teacher, config).loss(batch, None)[0], plain)
    # weight w adds (w - 1) x the shift tokens' NLL (same normaliser): recover it from two weights
    config.check_weights = {"shift": 2.0}
    two = TeacherSFT(teacher, config).loss(batch, None)[0]
    config.check_weights = {"shift": 3.0}
    three = TeacherSFT(teacher, config).loss(batch, None)[0]
    torch.testing.assert_close(three - two, two - plain)
    assert (two - plain).item() > 0
    with pytest.raises(ValueError, match="check_weights must map names to weights >= 0"):
        RewardTrainConfig(data="x", check_weights={"shift": -1.0})


def test_cosine_schedule_and_vision_init(perception_data, tmp_path):
    root, _ = perception_data
    config = RewardTrainConfig(data=str(root / "rated.jsonl"), max_steps=100, warmup_steps=10, lr_schedule="cosine",
                               min_lr_ratio=0.1)
    def f(step):
        return lr_factor(step, config.warmup_steps, config.lr_schedule, config.max_steps, config.min_lr_ratio)

    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0) and f(10) == pytest.approx(1.0)
    assert f(55) == pytest.approx(0.1 + 0.9 * 0.5, abs=0.02) and f(100) == pytest.approx(0.1)
    teacher = build_reward_model("teacher", teacher=True, seed=3)
    teacher.save_pretrained(tmp_path / "teacher")
    student = build_reward_model("student", teacher=False, seed=4)
    copied = copy_vision_tower(student, str(tmp_path / "teacher"))
    assert copied > 10
    for (name, p), (_, q) in zip(student.model.model.visual.blocks.named_parameters(),
                                 teacher.model.model.visual.blocks.named_parameters()):
        assert torch.equal(p, q), name
    # the merger projects into a language model of another width: not copied
    assert not torch.equal(student.model.model.visual.merger.mlp[-1].weight[:1, :1],
                           teacher.model.model.visual.merger.mlp[-1].weight[:1, :1])
    with pytest.raises(ValueError, match="lr_schedule"):
        RewardTrainConfig(data="x", lr_schedule="linear")


def test_trainer_eval_hook_lands_in_metrics(perception_data, tmp_path):
    root, _ = perception_data
    seen = []
    config = RewardTrainConfig(method="student_sft", init="tinyworld:student", data=str(root / "rated.jsonl"),
                               output_dir=str(tmp_path / "run"), max_steps=4, batch_size=8, eval_every=2)
    train_tinyworld(config, log=lambda *_: None, on_eval=lambda step, model: seen.append(step) or {"n": step})
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert seen == [2, 4] and [r.get("eval") for r in records] == [None, {"n": 2}, None, {"n": 4}]
    env = json.loads((tmp_path / "run" / "environment.json").read_text())  # what a bit-for-bit rerun needs
    assert env["packages"]["torch"] == torch.__version__ and env["threads"] == torch.get_num_threads()
    assert env["packages"]["transformers"] and env["cpu"]


def _image_token_angles(rope: str) -> torch.Tensor:
    """Rotary angles (rad, one per frequency) that the language model of a TinyWorld teacher built with `rope`
    gives the 4 x 4 image tokens of a 64 px image, shaped (row, column, frequency), through the model's own
    `get_rope_index` and rotary embedding."""
    rm = build_reward_model("teacher", teacher=True, rope=rope)
    config, tok = rm.model.config, rm.tokenizer
    ids = torch.tensor([[config.vision_start_token_id] + [config.image_token_id] * 16 + [config.vision_end_token_id]
                        + tok.convert_tokens_to_ids(["yes"])])
    positions, _ = rm.model.model.get_rope_index(ids, (ids == config.image_token_id).int(),
                                                 image_grid_thw=torch.tensor([[1, 8, 8]]))
    hidden = torch.zeros(1, ids.shape[1], config.text_config.hidden_size)
    cos, sin = rm.model.model.language_model.rotary_emb(hidden, positions)
    half = cos.shape[-1] // 2
    angles = torch.atan2(sin[0, 1:17, :half], cos[0, 1:17, :half])
    return angles.reshape(4, 4, half)


def test_image_rows_and_columns_are_both_visible_to_the_language_model():
    """With Qwen2-VL's own rotary proportions a column turns the column frequencies by < 0.01 rad, so the model
    could not tell left from centre from right (the shipped teacher's position misses, 2026-11-29); the default
    "spatial" layout turns them by > 0.2 rad per column and per row."""
    def widest_turn(angles, axis):  # largest angle change from one row (column) to the next, over frequencies
        step = angles.diff(dim=axis).abs()
        return float(torch.minimum(step, 2 * torch.pi - step).amax())

    spatial, original = _image_token_angles("spatial"), _image_token_angles("qwen2_vl")
    assert widest_turn(spatial, 1) > 0.2 and widest_turn(spatial, 0) > 0.2
    assert widest_turn(original, 1) < 0.01 and widest_turn(original, 0) > 0.05
    with pytest.raises(ValueError, match="rope layout .sideways.: use one of"):
        build_reward_model("student", teacher=False, rope="sideways")


def test_tinyworld_init_names_its_rotary_layout():
    """`init: tinyworld:SIZE[:ROPE]`: the spatial layout by default, Qwen2-VL's own proportions on request (the
    shipped TinyWorld configs pin them, as the shipped weights were built), anything else a clear error."""
    def rope_of(init):
        config = RewardTrainConfig(method="teacher_sft", init=init, data="rated.jsonl")
        return initial_model(config).model.config.text_config.rope_parameters

    assert rope_of("tinyworld:teacher")["rope_theta"] == 10.0
    assert rope_of("tinyworld:teacher:spatial") == rope_of("tinyworld:teacher")
    assert rope_of("tinyworld:teacher:qwen2_vl")["rope_theta"] == 10000.0
    assert rope_of("tinyworld:teacher:qwen2_vl")["mrope_section"] == [4, 6, 6]
    for bad in ("tinyworld:teacher:sideways", "tinyworld:giant", "tinyworld:teacher:spatial:again"):
        with pytest.raises(ValueError, match="optionally followed by the rotary layout, one of :spatial, :qwen2_vl"):
            rope_of(bad)
