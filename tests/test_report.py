"""The demo report's figures and page (`zr_align.recipes.report`), and the page in a real headless browser."""

import base64
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from zr_align.recipes import report

ARMS = ("base", "SFT-control", "reward-tuned")
PROMPTS = ["a large red circle on the left", "a small blue square at the top", "a large green triangle in the center"]
CHECK_SCRIPT = """<script>
window.addEventListener("load", () => {
  const images = [...document.images], links = [...document.querySelectorAll("a[href]")];
  const loaded = images.filter(i => i.complete && i.naturalWidth > 0).length;
  let broken = 0;
  for (const a of links) {
    try { const r = new XMLHttpRequest(); r.open("GET", a.href, false); r.send(); if (!r.responseText) broken++; }
    catch (e) { broken++; }
  }
  const out = document.createElement("div");
  out.id = "render-check";
  out.textContent = `images=${images.length} loaded=${loaded} links=${links.length} broken=${broken}`;
  document.body.appendChild(out);
});
</script>"""


def _interval(value):
    return {"value": value, "low": max(0.0, value - 0.1), "high": min(1.0, value + 0.1)}


def small_report(out: Path) -> Path:
    """Figures from made-up numbers and images, a Markdown page with a table, a list, figures and two links to
    files beside it, and its report.html."""
    rng = np.random.default_rng(0)
    rows = {arm: rng.integers(0, 256, size=(3, 64, 64, 3), dtype=np.uint8) for arm in ARMS}
    notes = {arm: [("all four right", True), ("wrong color", False), ("wrong shape, position", False)] for arm in ARMS}
    report.sample_grid(rows, PROMPTS, notes, out / "comparison.png")
    curves = {arm: [{"step": s, "reward_mean": 4.2 + 0.001 * s * k, "all_correct": 0.4 + 0.001 * s * k}
                    for s in (0, 25, 50)] for k, arm in enumerate(ARMS[1:])}
    report.training_curves(curves, [{"step": s, "reward_mean": 4.2 + 0.002 * s} for s in range(1, 51)],
                           out / "curves.png")
    accuracy = {arm: {a: _interval(0.5 + 0.1 * k) for a in ("size", "color", "shape", "position", "all_correct")}
                for k, arm in enumerate(ARMS)}
    report.attribute_bars(accuracy, out / "attributes.png")
    (out / "report.json").write_text("{}\n")
    (out / "notes.md").write_text("notes\n")
    text = ("# Report\n\nA paragraph with **bold** and `code`,\nover two lines.\n\n| arm | net |\n|---|---|\n"
            "| base | - |\n| reward-tuned | +10.5% [+4.0%, +17.0%] |\n\n- **base**: as shipped\n- **tuned**: LoRA\n\n"
            "![Samples](comparison.png)\n\n![Curves](curves.png)\n\n![Bars](attributes.png)\n\n"
            "Files: [report.json](report.json), [notes](notes.md).\n")
    figures = {name: out / name for name in ("comparison.png", "curves.png", "attributes.png")}
    (out / "report.html").write_text(report.markdown_to_html(text, figures, "Report"))
    return out / "report.html"


def test_the_page_embeds_every_figure_and_links_only_to_files_beside_it(tmp_path):
    page = small_report(tmp_path).read_text()
    sources = re.findall(r'<img src="([^"]+)"', page)
    assert len(sources) == 3 and all(s.startswith("data:image/png;base64,") for s in sources)
    for source in sources:
        png = base64.b64decode(source.split(",", 1)[1])
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
    links = re.findall(r'<a href="([^"]+)"', page)
    assert links == ["report.json", "notes.md"] and all((tmp_path / link).is_file() for link in links)
    assert "<table>" in page and "<li><strong>base</strong>: as shipped</li>" in page
    assert "<strong>bold</strong>" in page and "<code>code</code>" in page and "over two lines" in page


def test_the_grid_has_one_row_per_arm_and_a_column_per_prompt(tmp_path):
    small_report(tmp_path)
    with Image.open(tmp_path / "comparison.png") as grid:
        width, height = grid.size
    assert width >= 130 + 3 * 140 and height >= 3 * 128 + 2 * 16  # 2x tiles, a note under each, prompts below


def _chromium():
    return next((path for name in ("chromium", "chromium-browser", "google-chrome") if (path := shutil.which(name))),
                None)


@pytest.mark.slow
@pytest.mark.skipif(_chromium() is None, reason="no Chromium on PATH (Debian: apt-get install chromium)")
def test_report_renders_in_headless_chromium(tmp_path):
    page = small_report(tmp_path)
    common = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    checked = tmp_path / "check.html"  # the page plus a script that counts loaded images and fetchable links
    checked.write_text(page.read_text().replace("</body>", CHECK_SCRIPT + "</body>"))
    dom = subprocess.run([*common, "--allow-file-access-from-files", "--virtual-time-budget=5000", "--dump-dom",
                          checked.as_uri()], capture_output=True, text=True, timeout=120).stdout
    assert "images=3 loaded=3 links=2 broken=0" in dom, dom[-500:]
    shot = tmp_path / "screenshot.png"
    subprocess.run([*common, f"--screenshot={shot}", "--window-size=1300,1800", page.as_uri()],
                   capture_output=True, timeout=120)
    with Image.open(shot) as image:
        pixels = np.asarray(image.convert("RGB"))
    assert pixels.shape[:2] == (1800, 1300)
    colourful = np.abs(pixels.astype(int) - pixels.mean(axis=2, keepdims=True)).max(axis=2) > 40
    assert colourful.mean() > 0.01  # the figures are drawn, not blank boxes
