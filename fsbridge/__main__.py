"""`python -m fsbridge` runs the command line (the background mount re-runs itself this way)."""

from fsbridge.cli import main

main()
