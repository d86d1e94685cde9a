"""`python -m pipelines.cli`: the `leanset` command."""

import sys

from pipelines.cli import main

sys.exit(main())
