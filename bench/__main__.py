"""``python -m bench``: run the benchmark and append its figures to ``bench/RESULTS.md``."""

from bench.cli import main

raise SystemExit(main())
