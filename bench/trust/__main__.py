"""`python -m bench.trust`: the trust benchmark (see bench/trust/run.py and bench/trust/README.md)."""

from bench.trust.run import main

raise SystemExit(main())
