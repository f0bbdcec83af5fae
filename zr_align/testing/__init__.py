"""Helpers for tests, examples and benchmarks only: nothing in `zr_align` imports this package.

The tiny random models themselves live in `zr_align.tiny` (a `tiny:` path in a config builds them); their
builders are re-exported here under the names the README shows. `parity` holds the stock Hugging Face
processors that our torch preprocessing is tested against.
"""

from ..tiny import TINY_BUILDERS, tiny_reward_model
from ..tiny.diffusion import tiny_pipeline

__all__ = ["TINY_BUILDERS", "tiny_pipeline", "tiny_reward_model"]
