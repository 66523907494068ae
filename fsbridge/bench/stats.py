"""From raw runs to the figures of the report. Pure functions: results.json holds their input and output.

For every case of a scenario and every variant, over its counted runs (warm-ups and priming runs excluded),
in the order they ran:

    median, p95     p95 by linear interpolation between the closest ranks (numpy's default)
    min, max
    jitter          mean absolute difference between consecutive runs: how much one run differs from the next
    ratio           median of the variant / median of the baseline (below 1: faster than the baseline)
    ratio spread    min and max of the per-round ratios (the runs of one round ran next to each other)

A variant with any failed or timed-out run is "failed" (or "timeout") and gets no figures at all: a time
that only counts the runs that happened to work would not be honest.
"""

from __future__ import annotations

import math
import statistics
from typing import Any

FAILED = ("failed", "timeout")


def percentile(values: list[float], p: float) -> float:
    xs = sorted(values)
    if len(xs) == 1:
        return xs[0]
    pos = (len(xs) - 1) * p / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def jitter(values: list[float]) -> float | None:
    if len(values) < 2:
        return None
    return sum(abs(b - a) for a, b in zip(values, values[1:], strict=False)) / (len(values) - 1)


def describe(values: list[float]) -> dict[str, Any]:
    return {
        "n": len(values),
        "median": statistics.median(values),
        "p95": percentile(values, 95),
        "min": min(values),
        "max": max(values),
        "mean": statistics.fmean(values),
        "jitter": jitter(values),
    }


def counted_runs(runs: list[dict[str, Any]], case: str, variant: str) -> list[dict[str, Any]]:
    found = [
        r
        for r in runs
        if r["case"] == case and r["variant"] == variant and r["kind"] == "counted" and r["status"] == "ok"
    ]
    return sorted(found, key=lambda r: r["seq"])


def variant_status(runs: list[dict[str, Any]], case: str, variant: str) -> tuple[str, str | None]:
    """("ok" | "failed" | "timeout" | "not-run", the first error)."""
    mine = sorted((r for r in runs if r["case"] == case and r["variant"] == variant), key=lambda r: r["seq"])
    for r in mine:
        if r["status"] in FAILED:
            return r["status"], r.get("error")
    if any(r["kind"] == "counted" and r["status"] == "ok" for r in mine):
        return "ok", None
    reasons = [r.get("error") for r in mine if r["status"] == "skipped" and r.get("error")]
    return "not-run", reasons[0] if reasons else None


def paired_ratios(runs: list[dict[str, Any]], case: str, num: str, den: str) -> list[float]:
    """Per-round ratios num/den of the counted runs."""
    a = {r["round"]: r["elapsed_s"] for r in counted_runs(runs, case, num)}
    b = {r["round"]: r["elapsed_s"] for r in counted_runs(runs, case, den)}
    return [a[k] / b[k] for k in sorted(a) if k in b and b[k] > 0]


def ratio(
    rows: dict[str, dict[str, Any]], runs: list[dict[str, Any]], case: str, num: str, den: str
) -> dict[str, Any] | None:
    x, y = rows.get(num), rows.get(den)
    if not x or not y or x["status"] != "ok" or y["status"] != "ok" or not y["elapsed_s"]["median"]:
        return None
    pairs = paired_ratios(runs, case, num, den)
    return {
        "of": num,
        "to": den,
        "ratio": x["elapsed_s"]["median"] / y["elapsed_s"]["median"],
        "pair_min": min(pairs) if pairs else None,
        "pair_max": max(pairs) if pairs else None,
        "pairs": pairs,
    }


def _median_of(runs: list[dict[str, Any]], get: Any) -> float | None:
    values = []
    for r in runs:
        try:
            v = get(r)
        except (KeyError, TypeError):
            v = None
        if isinstance(v, (int, float)):
            values.append(v)
    return statistics.median(values) if values else None


def summarize_case(runs: list[dict[str, Any]], case: dict[str, Any]) -> dict[str, Any]:
    """The summary of one case: a row per variant, the baseline ratios and the extra ratios."""
    key, definition = case["key"], case["definition"]
    rows: dict[str, dict[str, Any]] = {}
    for variant in definition["variants"]:
        status, error = variant_status(runs, key, variant)
        row: dict[str, Any] = {"variant": variant, "status": status, "error": error}
        counted = counted_runs(runs, key, variant)
        row["run_ids"] = [r["id"] for r in counted]
        if status == "ok":
            times = [r["elapsed_s"] for r in counted]
            row["elapsed_s"] = describe(times)
            rates = [
                r["result"]["bytes"] / 2**20 / r["elapsed_s"]
                for r in counted
                if isinstance((r.get("result") or {}).get("bytes"), int) and r["elapsed_s"] > 0
            ]
            if len(rates) == len(counted) and rates:
                row["mib_per_s"] = describe(rates)
            parts = sorted(
                {k for r in counted for k in (r.get("result") or {}) if k.endswith("_s") and k not in ("elapsed_s", "mib_per_s")}
            )
            if parts:  # the workload's own split of its time (writetree: create_s, delete_s)
                row["parts_median_s"] = {k: _median_of(counted, lambda r, k=k: r["result"][k]) for k in parts}
            row["counters"] = {
                "share_requests": _median_of(counted, lambda r: r["counters"]["share"]["requests"]),
                "mount_backing_calls": _median_of(counted, lambda r: r["counters"]["mount"]["backing_calls"]),
                "mount_cache_hits": _median_of(counted, lambda r: r["counters"]["mount"]["cache_hits"]),
                "mount_cache_misses": _median_of(counted, lambda r: r["counters"]["mount"]["cache_misses"]),
            }
            roles: dict[str, dict[str, Any]] = {}
            for r in counted:
                for role, fig in ((r.get("resources") or {}).get("roles") or {}).items():
                    slot = roles.setdefault(
                        role, {"cpu_s": [], "peak_rss_bytes": 0, "read_bytes": [], "write_bytes": []}
                    )
                    if fig.get("cpu_s") is not None:
                        slot["cpu_s"].append(fig["cpu_s"])
                    slot["peak_rss_bytes"] = max(slot["peak_rss_bytes"], fig.get("peak_rss_bytes") or 0)
                    for k in ("read_bytes", "write_bytes"):
                        if fig.get(k) is not None:
                            slot[k].append(fig[k])
            row["resources"] = {
                role: {
                    "cpu_s_median": statistics.median(s["cpu_s"]) if s["cpu_s"] else None,
                    "peak_rss_bytes_max": s["peak_rss_bytes"] or None,
                    "read_bytes_median": statistics.median(s["read_bytes"]) if s["read_bytes"] else None,
                    "write_bytes_median": statistics.median(s["write_bytes"]) if s["write_bytes"] else None,
                }
                for role, s in roles.items()
            }
        rows[variant] = row
    baseline = definition["baseline"]
    for variant, row in rows.items():
        row["ratio_to_baseline"] = None if variant == baseline else ratio(rows, runs, key, variant, baseline)
    extra = []
    for text in definition.get("ratios", []):
        num, _, den = text.partition("/")
        extra.append({"name": text, "value": ratio(rows, runs, key, num, den)})
    return {
        "case": key,
        "baseline": baseline,
        "variants": [rows[v] for v in definition["variants"]],
        "ratios": extra,
    }


def summarize(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return [summarize_case(doc["runs"], case) for case in doc["cases"] if case.get("status") != "skipped"]
