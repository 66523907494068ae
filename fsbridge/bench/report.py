"""What a bench run leaves behind: results.json (everything), report.md (for people), report.png (at a
glance), and `--compare` (what changed between two results.json).

Every figure in report.md is computed by fsbridge.bench.stats from the counted runs in results.json, whose
ids are listed in its "summary"; report.md shows them with three significant digits.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any

from fsbridge.bench import stats

ROLE_ORDER = ("workload", "mount", "share", "server", "podman-service", "guest")


# --- formatting --------------------------------------------------------------------------------------------


def fmt_time(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.3g} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.3g} ms"
    return f"{seconds:.3g} s" if seconds < 1000 else f"{seconds:.0f} s"


def fmt_ratio(value: float | None) -> str:
    if value is None:
        return "-"
    return f"×{fmt_number(value)}"


def fmt_number(value: float) -> str:
    return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"


def fmt_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n:.0f} B"


def fmt_count(n: float | None) -> str:
    return "-" if n is None else f"{n:.0f}"


def fmt_spread(r: dict[str, Any] | None) -> str:
    if not r:
        return "-"
    spread = ""
    if r.get("pair_min") is not None:
        spread = f" ({fmt_ratio(r['pair_min'])[1:]}–{fmt_ratio(r['pair_max'])[1:]})"
    return f"{fmt_ratio(r['ratio'])}{spread}"


# --- results.json and report.md ----------------------------------------------------------------------------


def write_all(doc: dict[str, Any], out: Path) -> list[Path]:
    """Compute the summary into `doc`, then write results.json, report.md and (if possible) report.png."""
    out.mkdir(parents=True, exist_ok=True)
    doc["summary"] = stats.summarize(doc)
    chart = out / "report.png"
    chart_note = write_chart(doc, chart)
    doc["chart"] = chart_note
    results = out / "results.json"
    results.write_text(json.dumps(doc, indent=1, default=str) + "\n")
    md = out / "report.md"
    md.write_text(render_markdown(doc))
    return [results, md] + ([chart] if chart_note.get("written") else [])


def _case_status(doc: dict[str, Any]) -> list[str]:
    bad = []
    for case in doc.get("summary", []):
        for row in case["variants"]:
            if row["status"] in (*stats.FAILED, "not-run"):
                bad.append(f"{case['case']} {row['variant']}: {row['status']}")
    for case in doc.get("cases", []):
        if case.get("status") == "failed":
            bad.append(f"{case['key']}: {case.get('reason')}")
    return bad


def _guest_share_text(doc: dict[str, Any]) -> str:
    """The share line of a run across a qemu guest: which share, which accelerator, where each case ran."""
    share, guest = doc.get("share") or {}, doc.get("guest") or {}
    accel = guest.get("accel") or share.get("accel")
    parts = [f"a real `{share.get('share')}` share of a throw-away qemu guest ({share.get('memory_mb')} MiB)"]
    if accel:
        notes = guest.get("accel_notes") or share.get("accel_notes")
        notes = "; ".join(notes) if isinstance(notes, list) else notes
        parts.append(f"accelerator **{accel}**" + (f" ({notes})" if notes else ""))
        if accel == "tcg":
            parts.append("the guest's CPU is emulated, so its figures are relative only")
    gm = guest.get("machine") or {}
    if gm:
        parts.append(f"cases marked *(in the guest)* ran inside it (`{guest.get('command')}`; guest Linux "
                     f"{gm.get('kernel')}, {gm.get('cores')} vCPUs; local = the guest's tmpfs)")
    if share.get("api"):
        parts.append(f"load cases ran on the host against `fsbridge serve` in a guest ({share['api']}), so "
                     "upload crosses the virtual NIC and a path reference is read over the share")
    return "; ".join(parts)


def render_markdown(doc: dict[str, Any]) -> str:
    m = doc.get("machine") or {}
    share = doc.get("share") or {}
    lines = [f"# fsbridge bench, {doc.get('started', '?')}", ""]
    bad = _case_status(doc)
    if doc.get("interrupted"):
        status = "**INTERRUPTED**: the runs below are those that finished before Ctrl-C."
    elif doc.get("error"):
        status = f"**FAILED**: the bench could not go on: {doc['error']}"
    elif bad:
        status = f"**{len(bad)} FAILED**: " + "; ".join(bad)
    else:
        status = "Every variant ran."
    cases = doc.get("cases", [])
    skipped = [f"{c['key']} ({c.get('reason')})" for c in cases if c.get("status") == "skipped"]
    if skipped:
        status += " Skipped: " + "; ".join(skipped) + "."
    lines += [status, ""]
    if share.get("kind") == "emulate":
        share_text = (
            f"the slow-share emulator, `{share.get('command')}` (a model of the share, not the "
            f"share itself: see docs/benchmarks.md)"
        )
    elif share.get("kind") == "path":
        share_text = (
            f"the real share at `{share.get('path')}` (fixtures copied into a temporary folder on it)"
        )
    elif share.get("kind") == "qemu":
        share_text = _guest_share_text(doc)
    else:
        share_text = "-"
    versions = m.get("versions") or {}
    git = m.get("git") or {}
    rev = ""
    if git.get("commit"):
        dirty = " with uncommitted changes" if git.get("uncommitted_changes") else ""
        rev = f", commit {git['commit'][:12]}{dirty}"
    lines += [
        f"- Command: `{doc.get('command')}`; run time {fmt_time(doc.get('duration_s'))}.",
        f"- Share: {share_text}.",
        f"- Machine: {m.get('cpu_model')}, {m.get('cores')} cores, {fmt_bytes(m.get('memory_bytes'))}; "
        f"{m.get('os')}, Linux {m.get('kernel')}; Python {m.get('python')}; "
        f"{versions.get('fsbridge_cli')}{rev}; podman: {versions.get('podman') or 'not installed'}.",
        f"- Load average at start {_loads(m.get('load_average_at_start'))}, at end "
        f"{_loads(m.get('load_average_at_end'))} (other work on the machine shows as jitter).",
        "",
        "How to read the tables: times are medians of the counted runs (warm-up and priming runs excluded); "
        "file-system workloads are timed by the workload itself in a fresh process (setup excluded), "
        "commands (`fsbridge load`, `podman load`, `curl`) by their wall time, which is what a user waits. "
        "p95 interpolates linearly between ranks; jitter is the mean absolute difference between "
        "consecutive runs. The ratio is the variant's median over the baseline's (below 1: faster) and its "
        "spread is the lowest and highest ratio of runs made in the same round. A failed or timed-out "
        "variant shows as FAILED and gets no figures. Every figure comes from results.json (`summary` lists "
        "the run ids behind each row).",
        "",
    ]
    summary = {c["case"]: c for c in doc.get("summary", [])}
    if summary:
        lines += [
            "## Overview",
            "",
            "| case | baseline | median | other variants: ratio to the baseline |",
            "|---|---|---:|---|",
        ]
        for key, c in summary.items():
            rows = {r["variant"]: r for r in c["variants"]}
            base = rows[c["baseline"]]
            cells = []
            for r in c["variants"]:
                if r["variant"] == c["baseline"]:
                    continue
                if r["status"] != "ok":
                    cells.append(f"{r['variant']} {r['status'].upper()}")
                else:
                    rr = r.get("ratio_to_baseline")
                    cells.append(f"{r['variant']} {fmt_ratio(rr['ratio']) if rr else '-'}")
            base_median = (
                fmt_time(base["elapsed_s"]["median"]) if base["status"] == "ok" else base["status"].upper()
            )
            lines.append(f"| {key} | {c['baseline']} | {base_median} | {' · '.join(cells)} |")
        lines.append("")
    chart = doc.get("chart") or {}
    if chart.get("written"):
        lines += ["![medians per variant](report.png)", ""]
    else:
        lines += [f"No chart: {chart.get('reason', 'not drawn')}.", ""]
    for case in doc.get("cases", []):
        lines += _case_section(case, summary.get(case["key"]))
    if doc.get("notes"):
        lines += ["## Notes", ""] + [f"- {n}" for n in doc["notes"]] + [""]
    return "\n".join(lines)


def _loads(values: list[float] | None) -> str:
    return "-" if not values else " / ".join(f"{v:.2f}" for v in values)


def _case_section(case: dict[str, Any], summary: dict[str, Any] | None) -> list[str]:
    d = case["definition"]
    where = " *(in the guest)*" if case.get("where") == "guest" else ""
    lines = [f"## {case['key']}: {d['title']}{where}", "", d["description"], ""]
    fixture = case.get("fixture") or {}
    params = ", ".join(f"{k}={v}" for k, v in d["params"].items())
    lines.append(
        f"Workload `{d['workload']}` ({d['workload_summary']}); parameters {params}; "
        f"{d['runs']} counted runs after {d['warmup']} warm-up round(s), interleaved; page cache "
        f"{'dropped before every local, raw and cold run' if d['drop_caches'] else 'not dropped'}; "
        f"run bound {d['run_timeout_s']:g} s, case bound {d['time_bound_s']:g} s."
        + (f" Fixture: {_fixture_text(fixture)}." if fixture else "")
    )
    lines.append("")
    if case.get("status") == "skipped":
        return lines + [f"**Skipped**: {case.get('reason')}.", ""]
    if case.get("status") == "failed":
        lines += [f"**FAILED**: {case.get('reason')}", ""]
    if summary is None:
        return lines
    base = summary["baseline"]
    has_rate = any("mib_per_s" in r for r in summary["variants"])
    head = "| variant | median | p95 | min–max | jitter | runs | ratio to " + base + " (spread) |"
    rule = "|---|---:|---:|---:|---:|---:|---:|"
    if has_rate:
        head += " MiB/s (median) |"
        rule += "---:|"
    lines += [head, rule]
    failures = []
    for r in summary["variants"]:
        if r["status"] != "ok":
            label = "NOT RUN" if r["status"] == "not-run" else r["status"].upper()
            cells = [f"{r['variant']}", f"**{label}**", "-", "-", "-", str(len(r["run_ids"])), "-"]
            if has_rate:
                cells.append("-")
            lines.append("| " + " | ".join(cells) + " |")
            why = " ".join((r.get("error") or "no error recorded").split())
            failures.append(f"- **{r['variant']}** {label}: {why[:500]}")
            continue
        e = r["elapsed_s"]
        ratio = "baseline" if r["variant"] == base else fmt_spread(r.get("ratio_to_baseline"))
        cells = [
            r["variant"],
            fmt_time(e["median"]),
            fmt_time(e["p95"]),
            f"{fmt_time(e['min'])}–{fmt_time(e['max'])}",
            fmt_time(e["jitter"]),
            str(e["n"]),
            ratio,
        ]
        if has_rate:
            cells.append(fmt_number(r["mib_per_s"]["median"]) if "mib_per_s" in r else "-")
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    if failures:
        lines += failures + [""]
    parted = [r for r in summary["variants"] if r.get("parts_median_s")]
    if parted:
        lines.append(
            "Parts of the time (medians): "
            + "; ".join(
                f"{r['variant']} "
                + ", ".join(f"{k.removesuffix('_s')} {fmt_time(v)}" for k, v in r["parts_median_s"].items())
                for r in parted
            )
            + "."
        )
        lines.append("")
    extra = [x for x in summary.get("ratios", [])]
    if extra:
        lines.append(
            "Ratios worth a look: "
            + "; ".join(
                f"{x['name']} {fmt_spread(x['value']) if x['value'] else '- (a side failed)'}" for x in extra
            )
            + "."
        )
        lines.append("")
    ok_rows = [r for r in summary["variants"] if r["status"] == "ok"]
    if ok_rows:
        roles = [role for role in ROLE_ORDER if any(role in (r.get("resources") or {}) for r in ok_rows)]
        lines += [
            "What each run cost (medians; peak RSS is the highest of any run, sampled every 0.5 s with the "
            "process's children; a daemon's lifetime high-water mark VmHWM is in results.json): share "
            "requests are the "
            "FUSE requests the emulated share answered (each waited its latency), backing calls the calls "
            "the fsbridge mount made on the share, hits/misses its cache lookups (`fsbridge stats`).",
            "",
            "| variant | share requests | mount backing calls | cache hits / misses | "
            + " | ".join(f"{role} CPU / peak RSS" for role in roles)
            + " |",
            "|---|---:|---:|---:|" + "---:|" * len(roles),
        ]
        for r in ok_rows:
            c = r.get("counters") or {}
            hits = (
                f"{fmt_count(c.get('mount_cache_hits'))} / {fmt_count(c.get('mount_cache_misses'))}"
                if c.get("mount_cache_hits") is not None
                else "-"
            )
            cells = [
                r["variant"],
                fmt_count(c.get("share_requests")),
                fmt_count(c.get("mount_backing_calls")),
                hits,
            ]
            for role in roles:
                res = (r.get("resources") or {}).get(role)
                cells.append(
                    f"{fmt_time(res['cpu_s_median'])} / {fmt_bytes(res['peak_rss_bytes_max'])}"
                    if res
                    else "-"
                )
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    if case.get("notes"):
        lines += [f"- {n}" for n in case["notes"]] + [""]
    return lines


def _fixture_text(f: dict[str, Any]) -> str:
    if "files" in f and "dirs" in f:
        return f"{f['files']} files in {f['dirs']} folders, mean size {f.get('mean_file_bytes')} bytes"
    if "image_id" in f:
        return f"a {fmt_bytes(f['bytes'])} docker-archive with {f['layers']} layers"
    if "bytes" in f:
        return f"a {fmt_bytes(f['bytes'])} file"
    return "a scratch folder"


# --- the chart ---------------------------------------------------------------------------------------------


def write_chart(doc: dict[str, Any], path: Path) -> dict[str, Any]:
    """One panel per case: a bar per variant (median, with min–max), log scale, ratio to the baseline."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return {"written": False, "reason": "matplotlib is not installed (pip install 'fsbridge[plot]')"}
    cases = doc.get("summary") or []
    if not cases:
        return {"written": False, "reason": "no case has results"}
    cols = 2 if len(cases) > 1 else 1
    rows = math.ceil(len(cases) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(7 * cols, 1.0 + 2.4 * rows), squeeze=False)
    for ax, case in zip(axes.flat, cases, strict=False):
        variants = list(reversed(case["variants"]))
        names = [r["variant"] for r in variants]
        medians = [r["elapsed_s"]["median"] if r["status"] == "ok" else 0 for r in variants]
        ok = [m for m in medians if m > 0]
        pairs = list(zip(medians, variants, strict=True))
        lo = [m - r["elapsed_s"]["min"] if r["status"] == "ok" else 0 for m, r in pairs]
        hi = [r["elapsed_s"]["max"] - m if r["status"] == "ok" else 0 for m, r in pairs]
        colors = ["#4c72b0" if r["variant"] != case["baseline"] else "#55a868" for r in variants]
        ax.barh(
            names, [m if m > 0 else float("nan") for m in medians], xerr=[lo, hi], color=colors, capsize=3
        )
        if ok:
            ax.set_xscale("log")
            ax.set_xlim(min(ok) / 3, max(ok) * 12)
        for y, (r, m) in enumerate(zip(variants, medians, strict=True)):
            if r["status"] != "ok":
                ax.text(
                    min(ok) / 2.5 if ok else 0.1,
                    y,
                    f"{r['status'].upper()}",
                    color="#c44e52",
                    va="center",
                    fontweight="bold",
                )
                continue
            rr = r.get("ratio_to_baseline")
            label = fmt_time(m) + (f"  {fmt_ratio(rr['ratio'])}" if rr else "  (baseline)")
            ax.text(m * 1.15 + (hi[y] if hi[y] else 0), y, label, va="center", fontsize=8)
        ax.set_title(case["case"], fontsize=10)
        ax.set_xlabel("seconds, median with min–max (log scale)", fontsize=8)
        ax.tick_params(labelsize=8)
    for ax in list(axes.flat)[len(cases) :]:
        ax.axis("off")
    share = doc.get("share") or {}
    fig.suptitle(
        f"fsbridge bench {doc.get('started', '')[:10]}: share {share.get('profile') or share.get('path')}"
        f" (green: baseline; ×: ratio to it)",
        fontsize=11,
    )
    with warnings.catch_warnings():  # a layout that cannot be tightened is still readable
        warnings.simplefilter("ignore")
        fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return {"written": True, "file": path.name}


# --- --compare ---------------------------------------------------------------------------------------------


def compare(old: dict[str, Any], new: dict[str, Any], old_name: str = "OLD", new_name: str = "NEW") -> str:
    """A markdown table of what changed between two results.json: medians, ratios, and whether the change
    stands out of the runs' own spread (the two min–max ranges do not overlap) or is within noise."""

    def rows(doc: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
        summary = doc.get("summary") or stats.summarize(doc)
        return {(c["case"], r["variant"]): r for c in summary for r in c["variants"]}

    a, b = rows(old), rows(new)
    lines = [
        f"# Changes from {old_name} ({old.get('started', '?')}) to {new_name} ({new.get('started', '?')})",
        "",
    ]
    if (old.get("share") or {}) != (new.get("share") or {}):
        lines += [f"Note: the shares differ ({_share_name(old)} → {_share_name(new)}).", ""]
    lines += [
        "| case | variant | old median | new median | change | old ratio | new ratio | verdict |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    counts = {"faster": 0, "slower": 0, "within noise": 0}
    for key in sorted(set(a) | set(b), key=lambda k: (k[0], k[1])):
        ra, rb = a.get(key), b.get(key)
        if ra is None or rb is None:
            lines.append(
                f"| {key[0]} | {key[1]} | {'-' if ra is None else _med(ra)} | "
                f"{'-' if rb is None else _med(rb)} | | | | only in {old_name if rb is None else new_name} |"
            )
            continue
        if ra["status"] != "ok" or rb["status"] != "ok":
            lines.append(
                f"| {key[0]} | {key[1]} | {_med(ra)} | {_med(rb)} | | | | {ra['status']} → {rb['status']} |"
            )
            continue
        ea, eb = ra["elapsed_s"], rb["elapsed_s"]
        change = (eb["median"] - ea["median"]) / ea["median"] * 100 if ea["median"] else float("nan")
        if eb["max"] < ea["min"]:
            verdict = "faster"
        elif eb["min"] > ea["max"]:
            verdict = "slower"
        else:
            verdict = "within noise"
        counts[verdict] += 1
        ratio_a = fmt_ratio((ra.get("ratio_to_baseline") or {}).get("ratio"))
        ratio_b = fmt_ratio((rb.get("ratio_to_baseline") or {}).get("ratio"))
        lines.append(
            f"| {key[0]} | {key[1]} | {fmt_time(ea['median'])} | {fmt_time(eb['median'])} | "
            f"{change:+.1f}% | {ratio_a} | {ratio_b} | {verdict} |"
        )
    lines += [
        "",
        f"{counts['faster']} faster, {counts['slower']} slower, {counts['within noise']} within noise "
        "(faster/slower: the new min–max range lies wholly below/above the old one).",
    ]
    return "\n".join(lines) + "\n"


def _med(row: dict[str, Any]) -> str:
    return fmt_time(row["elapsed_s"]["median"]) if row["status"] == "ok" else row["status"].upper()


def _share_name(doc: dict[str, Any]) -> str:
    s = doc.get("share") or {}
    return str(s.get("profile") or s.get("path") or "?")
