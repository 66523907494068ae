"""Scenario files: what `fsbridge bench` runs, as data (TOML), loaded and checked before anything starts.

A scenario names one workload, its parameters (sizes), the variants it compares and how often it runs::

    order = 10                                  # where it runs in the suite (lower first)
    title = "Walk a source tree"
    description = "List every folder and stat every file (find, an IDE's indexer)."
    workload = "walk"                           # see WORKLOADS below
    variants = ["local", "raw", "cold", "warm"]
    baseline = "local"                          # every variant's ratio is taken against it
    ratios = ["cold/raw", "warm/raw"]           # more ratios worth a line in the report (optional)
    runs = 3                                    # counted runs of every variant
    warmup = 1                                  # uncounted rounds before them
    drop_caches = false                         # drop the page cache before local/raw/cold runs
    run_timeout_s = 120                         # one run taking longer is killed and shown as timed out
    time_bound_s = 300                          # no new round starts once the scenario ran this long

    [params]                                    # the workload's parameters; one list makes one case
    files = [1000, 4000]                        # per value (a size sweep)

    [quick]                                     # what `--quick` changes (same keys, params in [quick.params])
    runs = 2
    [quick.params]
    files = 300

The name of a scenario is its file name without `.toml`. Every problem is reported with the file and the
key, before any run starts.
"""

from __future__ import annotations

import copy
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fsbridge.errors import ConfigError

PACKAGE_SCENARIOS = Path(__file__).resolve().parent / "scenarios"

FS_VARIANTS = {
    "local": "local disk: the source folder itself (the floor)",
    "raw": "the raw share: the folder through the slow share, no fsbridge",
    "cold": "fsbridge mount over the share, cold: a fresh mount for every run",
    "warm": "fsbridge mount over the share, warm: one mount kept for the scenario, warmed before its runs",
}
LOAD_VARIANTS = {
    "floor": "read the archive and compute its sha256 on the local disk: what any loader must do",
    "sink": "curl sends the archive over a unix socket to a server that discards it: the transport floor",
    "upload": "fsbridge load --upload: the bytes travel over the API socket into the builtin store",
    "path-raw": "fsbridge load by path reference: the server reads the archive through the raw share",
    "path-mount": "fsbridge load by path reference through a fresh fsbridge mount over the share",
}
PODMAN_VARIANTS = {
    "podman-local": "podman load -i on the local file, no API in between: the floor",
    "podman-remote": "podman --remote load: the client uploads the archive over podman's REST API",
    "fsbridge-path": "fsbridge load by path reference; fsbridge serve --backend podman reads the raw share",
    "fsbridge-path-mount": "as fsbridge-path, with the server reading through a fresh fsbridge mount",
}


@dataclass(frozen=True)
class WorkloadSpec:
    family: str  # "fs", "load" or "podman": which variants apply
    fixture: str  # "tree", "bigfile", "archive" or "none"
    params: dict[str, int]  # name -> default (all integers)
    summary: str
    requires: tuple[str, ...] = ()

    @property
    def variants(self) -> dict[str, str]:
        return {"fs": FS_VARIANTS, "load": LOAD_VARIANTS, "podman": PODMAN_VARIANTS}[self.family]


_TREE = {"files": 1000, "files_per_dir": 20, "mean_file_bytes": 1200}
WORKLOADS: dict[str, WorkloadSpec] = {
    "walk": WorkloadSpec("fs", "tree", dict(_TREE), "list every folder of the tree and lstat every entry"),
    "statlist": WorkloadSpec("fs", "tree", dict(_TREE), "lstat every file of a known list (git status)"),
    "readtree": WorkloadSpec(
        "fs",
        "tree",
        dict(_TREE, mean_file_bytes=4096),
        "open and read every file of the tree (a build, grep -r)",
    ),
    "read": WorkloadSpec(
        "fs", "bigfile", {"size_mib": 256}, "read one large file sequentially in 1 MiB blocks"
    ),
    "writetree": WorkloadSpec(
        "fs",
        "none",
        {"files": 1000, "files_per_dir": 20, "file_bytes": 2048},
        "create a tree of small files, then delete it (npm install, rm -rf)",
    ),
    "load": WorkloadSpec(
        "load",
        "archive",
        {"size_mib": 256, "layers": 4},
        "load a multi-layer image archive into fsbridge's builtin store",
    ),
    "podman-load": WorkloadSpec(
        "podman",
        "archive",
        {"size_mib": 128, "layers": 4},
        "load a multi-layer image archive into podman",
        requires=("podman", "curl"),
    ),
}
SETTINGS = {
    "runs": int,
    "warmup": int,
    "drop_caches": bool,
    "run_timeout_s": (int, float),
    "time_bound_s": (int, float),
}
TOP_KEYS = {
    "order": int,
    "title": str,
    "description": str,
    "workload": str,
    "variants": list,
    "baseline": str,
    "ratios": list,
    "params": dict,
    "quick": dict,
    **SETTINGS,
}
REQUIRED = ("workload", "variants")
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]*$")


def _where(source: str, key: str) -> str:
    return f"{source}: {key}"


@dataclass
class Scenario:
    """One scenario file, checked; `cases()` expands it into what actually runs."""

    name: str
    source: str  # the file it came from
    order: int
    title: str
    description: str
    workload: str
    variants: list[str]
    baseline: str
    ratios: list[tuple[str, str]]
    runs: int
    warmup: int
    drop_caches: bool
    run_timeout_s: float
    time_bound_s: float
    params: dict[str, Any]  # name -> int, or a list of ints (the sweep)
    quick: dict[str, Any] = field(default_factory=dict)

    @property
    def spec(self) -> WorkloadSpec:
        return WORKLOADS[self.workload]

    def with_quick(self) -> "Scenario":
        """A copy with the file's [quick] table applied."""
        changed = copy.deepcopy(self)
        for key, value in self.quick.items():
            if key == "params":
                changed.params.update(value)
            else:
                setattr(changed, key, value)
        changed.quick = {}
        return changed

    def override(self, key: str, value: Any, *, origin: str) -> None:
        """Apply `--set NAME.KEY=VALUE` (a setting such as runs, or a workload parameter)."""
        if key in SETTINGS:
            _check_type(origin, key, value, SETTINGS[key])
            setattr(self, key, float(value) if key.endswith("_s") else value)
        elif key in self.spec.params:
            self.params[key] = _check_param(origin, key, value)
        else:
            known = ", ".join(sorted([*SETTINGS, *self.spec.params]))
            raise ConfigError(
                f"{origin}: scenario {self.name} has no key {key!r} (known: {known})", reason="bad-scenario"
            )
        self.validate_numbers(origin)

    def validate_numbers(self, origin: str) -> None:
        if self.runs < 1:
            raise ConfigError(
                _where(origin, f"runs must be at least 1, not {self.runs}"), reason="bad-scenario"
            )
        if self.warmup < 0:
            raise ConfigError(
                _where(origin, f"warmup must not be negative, not {self.warmup}"), reason="bad-scenario"
            )
        for key in ("run_timeout_s", "time_bound_s"):
            if getattr(self, key) <= 0:
                raise ConfigError(_where(origin, f"{key} must be positive"), reason="bad-scenario")

    def cases(self) -> list["Case"]:
        """One case per value of the swept parameter (the one given as a list), else one case."""
        sweep = [(k, v) for k, v in self.params.items() if isinstance(v, list)]
        if not sweep:
            return [Case(self, dict(self.params), None)]
        key, values = sweep[0]
        return [Case(self, {**self.params, key: value}, f"{key}={value}") for value in values]

    def definition(self) -> dict[str, Any]:
        """The scenario as run (after --quick and --set), for results.json."""
        return {
            "name": self.name,
            "source": self.source,
            "title": self.title,
            "description": self.description,
            "workload": self.workload,
            "workload_summary": self.spec.summary,
            "variants": self.variants,
            "variant_meaning": {v: self.spec.variants[v] for v in self.variants},
            "baseline": self.baseline,
            "ratios": [f"{a}/{b}" for a, b in self.ratios],
            "runs": self.runs,
            "warmup": self.warmup,
            "drop_caches": self.drop_caches,
            "run_timeout_s": self.run_timeout_s,
            "time_bound_s": self.time_bound_s,
            "params": self.params,
        }


@dataclass
class Case:
    """A scenario with every parameter fixed: what the runner runs."""

    scenario: Scenario
    params: dict[str, int]
    label: str | None  # "files=1000" for a sweep, else None

    @property
    def key(self) -> str:
        return self.scenario.name + (f"[{self.label}]" if self.label else "")


def _check_type(origin: str, key: str, value: Any, expected: Any) -> None:
    types = expected if isinstance(expected, tuple) else (expected,)
    if isinstance(value, bool) and bool not in types:
        ok = False
    else:
        ok = isinstance(value, types)
    if not ok:
        names = " or ".join(t.__name__ for t in types)
        raise ConfigError(_where(origin, f"{key} must be {names}, not {value!r}"), reason="bad-scenario")


def _check_param(origin: str, key: str, value: Any) -> Any:
    values = value if isinstance(value, list) else [value]
    if not values:
        raise ConfigError(_where(origin, f"{key}: an empty list"), reason="bad-scenario")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ConfigError(
                _where(origin, f"{key} must be a whole number >= 0 (or a list of them), not {v!r}"),
                reason="bad-scenario",
            )
    return list(values) if isinstance(value, list) else value


def _check_params(origin: str, table: Any, spec: WorkloadSpec, workload: str) -> dict[str, Any]:
    if not isinstance(table, dict):
        raise ConfigError(_where(origin, "must be a table"), reason="bad-scenario")
    out = {}
    for key, value in table.items():
        if key not in spec.params:
            known = ", ".join(sorted(spec.params))
            raise ConfigError(
                _where(origin, f"unknown parameter {key!r} for workload {workload!r} (known: {known})"),
                reason="bad-scenario",
            )
        out[key] = _check_param(f"{origin}.{key}", key, value)
    return out


def parse_scenario(name: str, data: dict[str, Any], source: str) -> Scenario:
    """Check one scenario's table; raise ConfigError naming the file and the key at the first problem."""
    if not NAME_RE.match(name):
        raise ConfigError(
            f"{source}: the file name must be lower-case letters, digits and dashes (.toml)",
            reason="bad-scenario",
        )
    for key, value in data.items():
        if key not in TOP_KEYS:
            known = ", ".join(sorted(TOP_KEYS))
            raise ConfigError(f"{source}: unknown key {key!r} (known: {known})", reason="bad-scenario")
        _check_type(_where(source, key), key, value, TOP_KEYS[key])
    for key in REQUIRED:
        if key not in data:
            raise ConfigError(f"{source}: missing key {key!r}", reason="bad-scenario")
    workload = data["workload"]
    if workload not in WORKLOADS:
        raise ConfigError(
            _where(source, f"workload {workload!r} is not one of {', '.join(WORKLOADS)}"),
            reason="bad-scenario",
        )
    spec = WORKLOADS[workload]
    variants = data["variants"]
    if not variants:
        raise ConfigError(_where(source, "variants: name at least one variant"), reason="bad-scenario")
    for v in variants:
        if v not in spec.variants:
            raise ConfigError(
                _where(
                    source,
                    f"variants: {v!r} does not apply to workload {workload!r} "
                    f"(choose from {', '.join(spec.variants)})",
                ),
                reason="bad-scenario",
            )
    if len(set(variants)) != len(variants):
        raise ConfigError(_where(source, "variants: a variant is named twice"), reason="bad-scenario")
    baseline = data.get("baseline", variants[0])
    if baseline not in variants:
        raise ConfigError(
            _where(source, f"baseline {baseline!r} is not one of the variants"), reason="bad-scenario"
        )
    ratios = []
    for text in data.get("ratios", []):
        a, sep, b = str(text).partition("/")
        if not sep or a not in variants or b not in variants:
            raise ConfigError(
                _where(source, f"ratios: {text!r} must be VARIANT/VARIANT of this scenario"),
                reason="bad-scenario",
            )
        ratios.append((a, b))
    params = dict(spec.params)
    params.update(_check_params(_where(source, "params"), data.get("params", {}), spec, workload))
    lists = [k for k, v in params.items() if isinstance(v, list)]
    if len(lists) > 1:
        raise ConfigError(
            _where(source, f"params: only one parameter may be a list (a sweep), not {lists}"),
            reason="bad-scenario",
        )
    quick = data.get("quick", {})
    for key, value in quick.items():
        if key == "params":
            _check_params(_where(source, "quick.params"), value, spec, workload)
        elif key in SETTINGS:
            _check_type(_where(source, f"quick.{key}"), key, value, SETTINGS[key])
        else:
            raise ConfigError(
                _where(source, f"quick: unknown key {key!r} (known: params, {', '.join(sorted(SETTINGS))})"),
                reason="bad-scenario",
            )
    scenario = Scenario(
        name=name,
        source=source,
        order=data.get("order", 1000),
        title=data.get("title", name),
        description=data.get("description", spec.summary).strip(),
        workload=workload,
        variants=list(variants),
        baseline=baseline,
        ratios=ratios,
        runs=data.get("runs", 3),
        warmup=data.get("warmup", 1),
        drop_caches=data.get("drop_caches", False),
        run_timeout_s=float(data.get("run_timeout_s", 120)),
        time_bound_s=float(data.get("time_bound_s", 300)),
        params=params,
        quick=quick,
    )
    scenario.validate_numbers(source)
    return scenario


def load_scenarios(folder: Path | None = None) -> list[Scenario]:
    """Every `*.toml` in `folder` (default: the scenarios shipped with fsbridge), in suite order."""
    folder = Path(folder) if folder is not None else PACKAGE_SCENARIOS
    if not folder.is_dir():
        raise ConfigError(f"{folder}: no such scenario folder", reason="bad-scenario")
    scenarios = []
    for path in sorted(folder.glob("*.toml")):
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: not valid TOML: {e}", reason="bad-scenario") from None
        scenarios.append(parse_scenario(path.stem, data, str(path)))
    if not scenarios:
        raise ConfigError(f"{folder}: no scenario files (*.toml)", reason="bad-scenario")
    scenarios.sort(key=lambda s: (s.order, s.name))
    return scenarios


def parse_set(text: str) -> tuple[str, str, Any]:
    """`NAME.KEY=VALUE` -> (NAME or "*", KEY, VALUE); VALUE is a TOML value or a comma-separated list."""
    target, sep, raw = text.partition("=")
    name, dot, key = target.strip().rpartition(".")
    if not sep or not key:
        raise ConfigError(f"--set {text}: expected SCENARIO.KEY=VALUE (or *.KEY=VALUE)", reason="bad-option")
    raw = raw.strip()
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        if "," in raw:
            try:
                value = [tomllib.loads(f"v = {part.strip()}")["v"] for part in raw.split(",")]
            except tomllib.TOMLDecodeError:
                value = raw
        else:
            value = raw
    return (name if dot else "*"), key, value


def select(
    scenarios: list[Scenario],
    names: tuple[str, ...] | list[str],
    *,
    quick: bool,
    sets: tuple[str, ...] | list[str] = (),
    runs: int | None = None,
    warmup: int | None = None,
) -> list[Scenario]:
    """The scenarios to run, in suite order, with --quick, --set, --runs and --warmup applied."""
    by_name = {s.name: s for s in scenarios}
    for name in names:
        if name not in by_name:
            raise ConfigError(f"no scenario {name!r}; known: {', '.join(by_name)}", reason="bad-scenario")
    chosen = [s for s in scenarios if not names or s.name in names]
    chosen = [s.with_quick() if quick else copy.deepcopy(s) for s in chosen]
    for text in sets:
        target, key, value = parse_set(text)
        if target != "*" and target not in by_name:
            raise ConfigError(
                f"--set {text}: no scenario {target!r}; known: {', '.join(by_name)}", reason="bad-option"
            )
        hit = False
        for s in chosen:
            if target in ("*", s.name) and (target != "*" or key in SETTINGS or key in s.spec.params):
                s.override(key, value, origin=f"--set {text}")
                hit = True
        if not hit and target == "*":
            raise ConfigError(f"--set {text}: no selected scenario has the key {key!r}", reason="bad-option")
    for s in chosen:
        if runs is not None:
            s.override("runs", runs, origin="--runs")
        if warmup is not None:
            s.override("warmup", warmup, origin="--warmup")
    return chosen
