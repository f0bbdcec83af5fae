"""`zr-align export`: a checkpoint of a train_t2i.py run written as the run's end writes its model (tiny runs)."""
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import train_t2i
from zr_align.cli import main as cli
from zr_align.diffusion.export import export_checkpoint

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs" / "tiny_debug.yaml")
UNET = Path("unet") / "diffusion_pytorch_model.safetensors"
LORA = "pytorch_lora_weights.safetensors"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A LoRA run and a full-weight run of the tiny debug config, 4 steps, checkpoints at steps 2 and 4."""
    root = tmp_path_factory.mktemp("runs")
    for name, extra in (("lora", []), ("full", ["model.trainable=full", "optim.lr=1e-4"])):
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
