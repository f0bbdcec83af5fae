"""TinyWorld rationales: the judge's verdict as a short, deterministic check list per rubric dimension, the text a
reasoning reward model is trained to write before its score (README: "TinyWorld: the embedded default").

One check list per dimension, e.g.

| dimension    | text                                                                       |
|--------------|----------------------------------------------------------------------------|
| alignment    | `size large yes color blue no shape circle yes position left yes`          |
| realism      | `blur no noise yes shift no`                                               |
| plausibility | `fragments no crop yes`                                                    |
| aesthetics   | `faded no clutter yes`                                                     |

Alignment names what the judge *observed* for each attribute and whether it matches the prompt (here: a blue
object where the prompt asked for another colour); a corner position reads `corner`, an off-palette colour
`other`. The other dimensions name each artefact check with `yes` when the artefact is present. Without an
object, alignment, plausibility and aesthetics read `object no`. Every word is in `RATIONALE_WORDS`.
"""

from __future__ import annotations

from .grammar import ATTRIBUTES, COLORS, SHAPES, SIZES
from .judge import Verdict

# The word each position value reads as in a rationale; the judge's corner cells all read "corner".
POSITION_WORDS: dict[str, str] = {"on the left": "left", "on the right": "right", "at the top": "top",
                                  "at the bottom": "bottom", "in the center": "center"}
# Dimension -> (word, artefact of `judge.ARTEFACTS`) for each check of that dimension, in rationale order.
ARTEFACT_CHECKS: dict[str, tuple[tuple[str, str], ...]] = {
    "realism": (("blur", "blur"), ("noise", "noise"), ("shift", "color_shift")),
    "plausibility": (("fragments", "fragments"), ("crop", "crop")),
    "aesthetics": (("faded", "low_contrast"), ("clutter", "clutter")),
}
RATIONALE_DIMENSIONS: tuple[str, ...] = ("alignment", *ARTEFACT_CHECKS)
# Every word a rationale can contain (feed them to a word-level tokenizer).
RATIONALE_WORDS: tuple[str, ...] = tuple(dict.fromkeys([
    *ATTRIBUTES, *SIZES, *COLORS, "other", *SHAPES, *POSITION_WORDS.values(), "corner", "yes", "no", "object",
    *(word for checks in ARTEFACT_CHECKS.values() for word, _ in checks),
]))


def _word(attribute: str, value: str | None) -> str:
    if attribute == "position":
        return POSITION_WORDS.get(value, "corner")
    return value  # sizes, colours ("other" when off-palette) and shapes are single words already


def rationale_text(verdict: Verdict, dimension: str) -> str:
    """The judge's check list for one rubric dimension (format in the module docstring).

    Raises:
        `ValueError`: for a dimension other than alignment, realism, plausibility or aesthetics.
    """
    if dimension not in RATIONALE_DIMENSIONS:
        raise ValueError(f"no rationale for dimension {dimension!r}; allowed: {', '.join(RATIONALE_DIMENSIONS)}")
    has_object = verdict.observed["size"] is not None
    if dimension != "realism" and not has_object:
        return "object no"
    if dimension == "alignment":
        return " ".join(f"{a} {_word(a, verdict.observed[a])} {'yes' if verdict.correct[a] else 'no'}"
                        for a in ATTRIBUTES)
    return " ".join(f"{word} {'yes' if verdict.artefacts[artefact] else 'no'}"
                    for word, artefact in ARTEFACT_CHECKS[dimension])


__all__ = ["ARTEFACT_CHECKS", "POSITION_WORDS", "RATIONALE_DIMENSIONS", "RATIONALE_WORDS", "rationale_text"]
