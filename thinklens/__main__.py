"""`python -m thinklens` (what `torchrun -m thinklens train RUN` starts on each rank): the CLI."""

from thinklens.cli import main

main()
