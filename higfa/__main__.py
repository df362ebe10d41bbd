"""`python -m higfa ...` is the `higfa` command (what torchrun and job scripts call)."""

import sys

from .jobs.cli import main

sys.exit(main())
