"""TinyWorld: the miniature world in which rewards can be measured against a known ground truth.

- `grammar`: the prompt grammar "a {size} {color} {shape} {position}", `Scene`, `parse_prompt`, prompt splits;
- `render`: anti-aliased 64x64 rendering with seeded layouts;
- `corrupt`: seeded corruptions, each lowering one rubric dimension;
- `judge`: the pixel-reading ground-truth judge (the "human" of this world);
- `annotators`: simulated raters, score distributions and pairwise preferences.
"""

from .annotators import AnnotatorPanel, Preference, Ratings
from .corrupt import CORRUPTIONS, Corrupted, corrupt
from .grammar import (
    Attributes,
    PromptSplits,
    Scene,
    all_prompts,
    parse_prompt,
    split_prompts,
)
from .judge import ARTEFACTS, Verdict, judge
from .render import Rendered, draw, render

__all__ = [
    "ARTEFACTS",
    "CORRUPTIONS",
    "AnnotatorPanel",
    "Attributes",
    "Corrupted",
    "Preference",
    "PromptSplits",
    "Ratings",
    "Rendered",
    "Scene",
    "Verdict",
    "all_prompts",
    "corrupt",
    "draw",
    "judge",
    "parse_prompt",
    "render",
    "split_prompts",
]
