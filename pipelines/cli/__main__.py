"""`python -m leanset.pipelines.cli`: the `leanset` command."""

import sys

from leanset.pipelines.cli import main

sys.exit(main())
