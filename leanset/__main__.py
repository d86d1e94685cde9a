"""`python -m leanset`: the `leanset` command."""

from leanset.pipelines.cli import main

raise SystemExit(main())
