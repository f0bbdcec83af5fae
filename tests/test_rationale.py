"""The judge's verdict as a check list per rubric dimension (`zr_align.tinyworld.rationale`)."""

import numpy as np
import pytest

from zr_align.tinyworld.judge import judge
from zr_align.tinyworld.rationale import RATIONALE_DIMENSIONS, RATIONALE_WORDS, rationale_text
from zr_align.tinyworld.render import render


def test_rationale_text_reads_the_verdict():
    prompt = "a large red circle on the left"
    image = render("a large blue circle on the left", seed=3).image
    verdict = judge(image, prompt)
    assert rationale_text(verdict, "alignment") == "size large yes color blue no shape circle yes position left yes"
    assert rationale_text(verdict, "realism") == "blur no noise no shift no"
    assert rationale_text(verdict, "plausibility") == "fragments no crop no"
    assert rationale_text(verdict, "aesthetics") == "faded no clutter no"
    empty = judge(np.full((64, 64, 3), 230, np.uint8), prompt)
    assert rationale_text(empty, "alignment") == "object no"
    with pytest.raises(ValueError, match="no rationale for dimension 'style'"):
        rationale_text(verdict, "style")


def test_a_corner_and_an_off_palette_colour_read_as_corner_and_other():
    image = np.full((64, 64, 3), 230, np.uint8)
    image[3:17, 3:17] = (120, 80, 40)  # a brown square in the top-left cell: no palette colour, no grammar position
    verdict = judge(image, "a small red square at the top")
    assert verdict.observed["position"] == "top-left corner"
    assert rationale_text(verdict, "alignment") == "size small yes color other no shape square yes position corner no"
    words = {w for d in RATIONALE_DIMENSIONS for w in rationale_text(verdict, d).split()}
    assert words <= set(RATIONALE_WORDS) and {"corner", "other"} <= words
