"""`fsbridge bench`: measure what the cached mount and path references buy, against the floor, interleaved.

    scenarios/*.toml   what to run, as data: workload, sizes, variants, runs (scenarios.py loads and checks)
    fixtures.py        the trees, files and image archives the workloads use, generated on the spot
    workloads.py       the timed workloads, each in its own process (`python -m fsbridge.bench.workloads`)
    variants.py        local disk, raw share, fsbridge mount cold / warm, servers, podman: setup and teardown
    procs.py           child processes: fsbridge commands, services, bounded timed runs, the cleanup registry
    sampler.py         CPU, peak RSS and I/O of every process involved, every 0.5 s (psutil)
    runner.py          interleaved rounds, warm-ups, bounds, failures recorded as failures, cleanup on Ctrl-C
    stats.py           median, p95, min–max, jitter, ratios with their spread: from results.json's runs
    report.py          results.json, report.md, report.png, and `--compare`

The bench drives fsbridge only through its command line, in subprocesses, as a user would: it measures what
users get, and imports none of the modules it measures.
"""
