"""What follows a train_t2i.py run (tiny runs): `zr-align export` (a checkpoint written as the run's end writes its
model) and `zr-align soup` (the weights of runs from one base averaged)."""
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import train_t2i
from zr_align.cli import main as cli
from zr_align.diffusion.export import export_checkpoint
from zr_align.diffusion.soup import average_pipelines

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs" / "tiny_debug.yaml")
UNET = Path("unet") / "diffusion_pytorch_model.safetensors"
LORA = "pytorch_lora_weights.safetensors"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A LoRA run and two full-weight runs (seeds 0 and 1) of the tiny debug config, 4 steps, checkpoints at steps 2
    and 4; the full runs share one tiny base."""
    root = tmp_path_factory.mktemp("runs")
    full = ["model.trainable=full", "optim.lr=1e-4"]
    for name, extra in (("lora", []), ("full", full), ("full_seed1", [*full, "seed=1"])):
        if name == "full_seed1":
            (root / name).mkdir()
            (root / name / ".tiny").symlink_to(root / "full" / ".tiny", target_is_directory=True)
        assert train_t2i.main(["--config", TINY, f"output_dir={root / name}", *extra]) == 0
    return root


def test_last_lora_checkpoint_exports_the_runs_own_lora(runs, tmp_path):
    """The last checkpoint gives the LoRA the run wrote at its end, tensor for tensor; an earlier one another."""
    assert cli(["export", str(runs / "lora" / "checkpoints" / "step_4"), "--out", str(tmp_path / "s4")]) == 0
    export_checkpoint(runs / "lora" / "checkpoints" / "step_2", tmp_path / "s2")
    final, last, earlier = (load_file(p / LORA) for p in (runs / "lora" / "lora", tmp_path / "s4", tmp_path / "s2"))
    assert last.keys() == final.keys() and all(torch.equal(last[k], final[k]) for k in final)
    assert earlier.keys() == final.keys() and any(not torch.equal(earlier[k], final[k]) for k in final)


def test_last_full_checkpoint_exports_the_runs_own_pipeline(runs, tmp_path):
    """With every weight trained the export is a whole pipeline folder equal to the run's `pipeline`; step 2's UNet
    differs from it and from the base's."""
    from diffusers import StableDiffusionPipeline

    export_checkpoint(runs / "full" / "checkpoints" / "step_4", tmp_path / "s4")
    export_checkpoint(runs / "full" / "checkpoints" / "step_2", tmp_path / "s2")
    final, last, earlier = (load_file(p / UNET) for p in (runs / "full" / "pipeline", tmp_path / "s4", tmp_path / "s2"))
    assert last.keys() == final.keys() and all(torch.equal(last[k], final[k]) for k in final)
    assert any(not torch.equal(earlier[k], final[k]) for k in final)
    base = load_file(next((runs / "full" / ".tiny").glob("sd*")) / UNET)
    assert any(not torch.equal(earlier[k], base[k].to(earlier[k].dtype)) for k in base)
    assert StableDiffusionPipeline.from_pretrained(tmp_path / "s2").unet is not None


@pytest.mark.parametrize("case, message", [
    ("no_checkpoint", "is not a complete checkpoint folder"),
    ("out_not_empty", "already holds files"),
])
def test_bad_input_is_refused_in_one_line_and_writes_nothing(runs, tmp_path, capsys, case, message):
    out = tmp_path / "out"
    checkpoint = runs / "lora" / "checkpoints" / "step_4"
    if case == "no_checkpoint":
        checkpoint = runs / "lora" / "lora"
    else:
        out.mkdir()
        (out / "keep.txt").write_text("mine")
    assert cli(["export", str(checkpoint), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    if case == "no_checkpoint":
        assert not out.exists()
    else:
        assert [p.name for p in out.iterdir()] == ["keep.txt"] and (out / "keep.txt").read_text() == "mine"


def test_soup_is_the_mean_of_the_trained_weights_and_copies_the_rest(runs, tmp_path):
    """The UNet of a soup of two seeds is their mean (and differs from both); the VAE and text encoder, which the
    runs did not train, are copied bit for bit; a soup of one folder with itself is that folder exactly; the
    soup is a pipeline that loads."""
    from diffusers import StableDiffusionPipeline

    a, b = runs / "full" / "pipeline", runs / "full_seed1" / "pipeline"
    assert cli(["soup", str(a), str(b), "--out", str(tmp_path / "ab")]) == 0
    ua, ub, soup = (load_file(p / UNET) for p in (a, b, tmp_path / "ab"))
    assert any(not torch.equal(ua[k], ub[k]) for k in ua)
    for k in ua:
        assert torch.allclose(soup[k], (ua[k].double() + ub[k].double()).div(2).float(), rtol=0, atol=0)
    assert any(not torch.equal(soup[k], ua[k]) for k in ua) and any(not torch.equal(soup[k], ub[k]) for k in ub)
    for component in ("vae", "text_encoder"):
        for file in (a / component).glob("*.safetensors"):
            base, mixed = load_file(file), load_file(tmp_path / "ab" / component / file.name)
            assert base.keys() == mixed.keys() and all(torch.equal(base[k], mixed[k]) for k in base)
    average_pipelines([a, a], tmp_path / "aa")
    same = load_file(tmp_path / "aa" / UNET)
    assert all(torch.equal(same[k], ua[k]) for k in ua)
    assert StableDiffusionPipeline.from_pretrained(tmp_path / "ab").unet is not None


def test_soup_refuses_what_it_cannot_average_and_leaves_no_folder(runs, tmp_path, capsys):
    """LoRA folders, a single folder and weights of another shape are refused in one line; nothing is written."""
    from safetensors.torch import save_file

    a = runs / "full" / "pipeline"
    other = tmp_path / "other"
    shutil.copytree(a, other)
    state = load_file(other / UNET)
    name = next(iter(state))
    state[name] = torch.zeros(3)
    save_file(state, other / UNET)
    cases = [([str(runs / "lora" / "lora"), str(a)], "is a LoRA folder"),
             ([str(a)], "needs two or more pipeline folders"),
             ([str(a), str(other)], "does not match")]
    for folders, message in cases:
        out = tmp_path / "soup"
        assert cli(["soup", *folders, "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1
        assert not out.exists() and not (tmp_path / "soup.tmp").exists()
