"""`python -m jacbench`: the command line (jacbench.cli), as the `jacbench` command."""
import sys

from jacbench.cli import main

sys.exit(main())
