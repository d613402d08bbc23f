"""`python -m jacbench`: the command line (jacbench.bench.cli), as the `jacbench` command."""
import sys

from jacbench.bench.cli import main

sys.exit(main())
