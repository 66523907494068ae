"""The timed workloads now live in the package: `python -m fsbridge.bench.workloads MODE ...`.

This file is kept so that commands written against it keep working; it runs the same code:

    python bench/workloads.py walk ROOT
    python bench/workloads.py statlist ROOT LIST
    python bench/workloads.py read FILE [--bs N]

See fsbridge/bench/workloads.py for every mode (also readtree, hash, writetree, sink).
"""

import sys

from fsbridge.bench.workloads import main

if __name__ == "__main__":
    sys.exit(main())
