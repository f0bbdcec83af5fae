"""`python -m zr_align.cli ...`, the same as `zr-align ...`."""

import sys

from . import main

sys.exit(main())
