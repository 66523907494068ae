"""The `fsbridge` command line: a click group whose subcommands only parse, call the core and report.

Errors cross one boundary here: FsbridgeError becomes a one-line message on stderr and exit 1;
usage errors are click's (exit 2). No traceback reaches a user for a user mistake.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import sys
from typing import Any, Callable

import click

from fsbridge import __version__
from fsbridge.errors import ConfigError, FsbridgeError


def reports_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn FsbridgeError (and OSError from the user's own paths) into exit status 1 with a sentence."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except FsbridgeError as e:
            raise click.ClickException(f"{e.message} [{e.reason}]") from None
        except OSError as e:
            where = f": {e.filename}" if e.filename else ""
            raise click.ClickException(f"{e.strerror or e}{where}") from None

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="fsbridge")
def cli() -> None:
    """Make host folders and image loads fast inside a container VM.

    \b
    In the VM:   fsbridge mount /mnt/host        (cached view of the host shares)
                 fsbridge serve                  (accepts path references and uploads)
    On the host: fsbridge load ~/image.tar       (sends the path; uploads only if refused)
    """


# --- path mapping: the shared --map/--config options and `fsbridge map` -------------------------------------


def _parse_map_values(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> tuple[Any, ...]:
    from fsbridge.errors import ConfigError
    from fsbridge.mapping import parse_map_option

    try:
        return tuple(parse_map_option(value) for value in values)
    except ConfigError as e:
        raise click.BadParameter(e.message, ctx=ctx, param=param) from None


def mapping_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Add ``--map HOST=BACKING[,OPTION...]`` (parameter ``maps``: parsed Mapping objects) and ``--config FILE``
    (parameter ``config``) to a command; build the table with ``MappingTable.load(maps, config)``."""
    fn = click.option(
        "--config",
        "config",
        type=click.Path(exists=True, dir_okay=False),
        metavar="FILE",
        help="TOML config file with [[map]] entries (host, backing, case_insensitive, unicode_normalize).",
    )(fn)
    fn = click.option(
        "--map",
        "maps",
        multiple=True,
        metavar="HOST=BACKING[,OPT]",
        callback=_parse_map_values,
        help="Host folder HOST is reachable in the VM at BACKING. Repeatable; the longest match wins. "
        "OPT: case=insensitive|sensitive, unicode=normalize|exact. Without --map or --config, the "
        "9p/virtiofs/drvfs shares in /proc/self/mountinfo are used.",
    )(fn)
    return fn


def _absolute_vm_path(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is not None and not value.startswith("/"):
        raise click.BadParameter(f"{value!r} must be an absolute path in the VM, such as /mnt/host.")
    return value


@cli.command("map")
@click.argument("path")
@mapping_options
@click.option(
    "--mount",
    "mountpoint",
    metavar="MOUNTPOINT",
    callback=_absolute_vm_path,
    help="Print the path under the fsbridge mount at MOUNTPOINT instead of the backing path.",
)
@click.option(
    "--check",
    is_flag=True,
    help="In the VM: also require that the file exists and that no symbolic link leads outside the share.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object with every form of the path.")
@reports_errors
def map_command(
    path: str, maps: tuple[Any, ...], config: str | None, mountpoint: str | None, check: bool, as_json: bool
) -> None:
    """Show where the host path PATH is found in the VM.

    Prints the backing path (PATH on the 9p / virtiofs / drvfs share), or with --mount the path under the
    fsbridge mount. Exits 1 with the reason when PATH cannot be served: not-mapped, outside-export,
    unc-unsupported, not-absolute, invalid-path, not-found (with --check).

    \b
    Examples:
      $ fsbridge map /Users/me/img.tar --map /Users=/mnt/Users
      /mnt/Users/me/img.tar
      $ fsbridge map 'C:\\Users\\me\\img.tar' --map 'C:\\=/mnt/c' --mount /mnt/host
      /mnt/host/c/Users/me/img.tar
      $ fsbridge map /srv/img.tar --map '/srv=/mnt/srv,case=insensitive' --json

    \b
    --map HOST=BACKING[,OPT...]: HOST and BACKING split at the first '=/'.
      case=insensitive|sensitive   compare names ignoring case, or exactly
      unicode=normalize|exact      treat NFC and NFD spellings as one name, or not
    Defaults: Windows drives and macOS folders (/Users, /Volumes, /private,
    /var/folders) are case- and Unicode-insensitive; other POSIX folders are exact.
    """
    import json

    from fsbridge.mapping import MappingTable

    table = MappingTable.load(maps, config)
    resolution = table.resolve(path, check=check)
    mount_path = resolution.under_mount(mountpoint) if mountpoint else None
    if as_json:
        m = resolution.mapping
        record = {
            "path": path,
            "host_path": resolution.host_path,
            "backing_path": resolution.backing_path,
            "exposed_path": resolution.exposed_path,
            "mount_path": mount_path,
            "real_path": resolution.real_path,
            "mapping": {
                "host": m.host,
                "backing": m.backing,
                "exposed": m.exposed,
                "case_insensitive": m.case_insensitive,
                "unicode_insensitive": m.unicode_insensitive,
                "source": m.source,
            },
        }
        click.echo(json.dumps(record, indent=2, ensure_ascii=False))
    else:
        click.echo(mount_path or resolution.backing_path)


# --- the cached mount: mount, umount, invalidate, stats, emulate -----------------------------------------------

_TTL = click.FloatRange(min=0)


@cli.command("mount")
@click.argument("mountpoint", type=click.Path(file_okay=False))
@mapping_options
@click.option("--foreground", "-f", is_flag=True, help="Stay in the foreground (logs go to stderr).")
@click.option("--entry-ttl", type=_TTL, default=30.0, show_default=True, metavar="S",
              help="Seconds a name -> file answer is trusted (daemon and kernel).")
@click.option("--attr-ttl", type=_TTL, default=30.0, show_default=True, metavar="S",
              help="Seconds file attributes (size, times, mode) are trusted.")
@click.option("--negative-ttl", type=_TTL, default=10.0, show_default=True, metavar="S",
              help="Seconds a 'no such file' answer is trusted.")
@click.option("--dir-ttl", type=_TTL, default=30.0, show_default=True, metavar="S",
              help="Seconds a directory listing is trusted.")
@click.option("--no-cache", is_flag=True, help="Turn every cache off (a plain passthrough).")
@click.option("--threads", type=click.IntRange(1, 1024), default=32, show_default=True,
              help="Parallel requests to the share.")
@click.option("--debug", is_flag=True, help="Log every request (very verbose).")
@reports_errors
def mount_command(mountpoint: str, maps: tuple[Any, ...], config: str | None, foreground: bool,
                  entry_ttl: float, attr_ttl: float, negative_ttl: float, dir_ttl: float, no_cache: bool,
                  threads: int, debug: bool) -> None:
    """Mount a cached view of the host folders shared into this VM at MOUNTPOINT.

    Every host folder appears under MOUNTPOINT at its own host path: /Users/me at MOUNTPOINT/Users/me,
    C:\\Users\\me at MOUNTPOINT/c/Users/me. Lookups, attributes and listings are cached for the TTLs
    below, so repeated metadata never leaves the VM; listing a folder fetches its entries' attributes
    in parallel. Changes made through the mount are seen at once; changes made on the host show up
    within the TTLs, or at once after `fsbridge invalidate PATH`.

    \b
    Examples:
      fsbridge mount /mnt/host                          # the shares found in /proc/self/mountinfo
      fsbridge mount /mnt/host --map /Users=/Users      # podman machine on macOS
      fsbridge mount /mnt/host --map 'C:\\=/mnt/c'        # WSL2
      fsbridge stats /mnt/host; fsbridge umount /mnt/host
    """
    from fsbridge.fs.cache import CacheConfig
    from fsbridge.fs.mount import check_mountpoint, configure_logging, mount_bridge, spawn_argv, start_background
    from fsbridge.mapping import MappingTable

    table = MappingTable.load(maps, config)
    roots = table.exposed_roots()
    if not roots:
        raise ConfigError("no host folders to expose: give --map HOST=BACKING or --config FILE "
                          "(no 9p, virtiofs or drvfs share was found in /proc/self/mountinfo)",
                          reason="no-mappings")
    for _, backing in roots:
        if not os.path.isdir(backing):
            raise ConfigError(f"backing folder {backing} does not exist or is not a folder", reason="no-backing")
    path = check_mountpoint(mountpoint)
    cache = CacheConfig.disabled() if no_cache else CacheConfig(
        entry_ttl=entry_ttl, attr_ttl=attr_ttl, negative_ttl=negative_ttl, dir_ttl=dir_ttl)
    if not foreground:
        spec = {"kind": "bridge", "mountpoint": path, "roots": roots, "threads": threads, "debug": debug,
                "cache": dataclasses.asdict(cache)}
        pid = start_background(spawn_argv(spec), path)
        click.echo(f"Mounted {len(roots)} host folder(s) at {path} (pid {pid}).")
        return
    configure_logging(debug)
    mount_bridge(path, roots, cache=cache, threads=threads)


@cli.command("umount")
@click.argument("mountpoint", type=click.Path(file_okay=False))
@reports_errors
def umount_command(mountpoint: str) -> None:
    """Unmount an fsbridge mount (or emulator) at MOUNTPOINT; its daemon then exits.

    \b
    Example:
      fsbridge umount /mnt/host
    """
    from fsbridge.fs.mount import unmount

    unmount(mountpoint)


def _control_xattr(path: str, name: str) -> dict[str, Any]:
    import errno
    import json

    try:
        return json.loads(os.getxattr(path, name))
    except OSError as e:
        if e.errno in (errno.ENODATA, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise FsbridgeError(f"{path} is not on an fsbridge mount", reason="not-fsbridge") from None
        raise


@cli.command("invalidate")
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@reports_errors
def invalidate_command(paths: tuple[str, ...]) -> None:
    """Drop cached metadata at and below each PATH on a running mount, at once.

    Use it after changing files on the host side when you cannot wait for the TTLs. A PATH that does
    not exist (yet) invalidates its nearest existing parent, so new host files appear too.

    \b
    Examples:
      fsbridge invalidate /mnt/host/Users/me/project
      fsbridge invalidate /mnt/host                     # everything
    """
    for path in paths:
        target = os.path.abspath(path)
        while not os.path.lexists(target) or os.path.islink(target):
            parent = os.path.dirname(target)
            if parent == target:
                break
            target = parent
        result = _control_xattr(target, "user.fsbridge.invalidate")
        click.echo(f"{target}: {result['invalidated']} cached facts dropped")


@cli.command("stats")
@click.argument("mountpoint", type=click.Path(exists=True, file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the raw statistics as JSON.")
@reports_errors
def stats_command(mountpoint: str, as_json: bool) -> None:
    """Show cache hits, misses, evictions and backing calls of the mount at MOUNTPOINT.

    \b
    Example:
      fsbridge stats /mnt/host --json | jq .backing_calls_total
    """
    import json

    stats = _control_xattr(mountpoint, "user.fsbridge.stats")
    if as_json:
        click.echo(json.dumps(stats, indent=2, sort_keys=True))
        return
    click.echo(f"inodes known: {stats['inodes']}   open files: {stats['open_files']}")
    click.echo(f"{'cache':<10} {'hits':>10} {'misses':>10} {'expired':>10} {'evicted':>10} {'size':>10}")
    for name, c in stats["cache"].items():
        click.echo(f"{name:<10} {c['hits']:>10} {c['misses']:>10} {c['expired']:>10} {c['evictions']:>10} "
                   f"{c['size']:>10}")
    click.echo(f"backing calls: {stats['backing_calls_total']}")
    for op, n in stats["backing_calls"].items():
        click.echo(f"  {op:<12} {n:>10}")


@cli.command("emulate")
@click.argument("source", type=click.Path(exists=True, file_okay=False))
@click.argument("mountpoint", type=click.Path(file_okay=False))
@click.option("--profile", metavar="NAME", help="A named share model: 9p-virtio, wsl2-drvfs, virtiofs, none.")
@click.option("--latency-us", type=click.FloatRange(min=0), metavar="N",
              help="Delay added to every request, in microseconds (overrides the profile's).")
@click.option("--bandwidth-mib", type=click.FloatRange(min=0, min_open=True), metavar="S",
              help="Throughput cap shared by all reads and writes, in MiB/s.")
@click.option("--foreground", "-f", is_flag=True, help="Stay in the foreground.")
@click.option("--threads", type=click.IntRange(1, 1024), default=32, show_default=True)
@click.option("--debug", is_flag=True, help="Log every request.")
@reports_errors
def emulate_command(source: str, mountpoint: str, profile: str | None, latency_us: float | None,
                    bandwidth_mib: float | None, foreground: bool, threads: int, debug: bool) -> None:
    """Mount SOURCE at MOUNTPOINT as a slow share (a 9p / drvfs / virtiofs model) for tests and benchmarks.

    Every cache is off (no kernel caching, direct I/O) and every request waits the profile's latency,
    concurrently, as a real 9p server answers tagged requests; reads and writes share one bandwidth cap.
    Profiles and where their numbers come from: docs/benchmarks.md.

    \b
    Examples:
      fsbridge emulate ~/src /mnt/slow --profile 9p-virtio
      fsbridge emulate ~/src /mnt/slow --latency-us 300 --bandwidth-mib 800
      fsbridge mount /mnt/host --map /src=/mnt/slow     # the cached mount over it
    """
    from fsbridge.emulator import resolve_profile
    from fsbridge.fs.mount import check_mountpoint, configure_logging, mount_emulator, spawn_argv, start_background

    model = resolve_profile(profile, latency_us, bandwidth_mib)
    path = check_mountpoint(mountpoint)
    if not foreground:
        spec = {"kind": "emulate", "source": os.path.abspath(source), "mountpoint": path, "threads": threads,
                "debug": debug, "profile": dataclasses.asdict(model)}
        pid = start_background(spawn_argv(spec), path)
        click.echo(f"Emulating a {model.name} share of {os.path.abspath(source)} at {path} (pid {pid}).")
        return
    configure_logging(debug)
    mount_emulator(os.path.abspath(source), path, model, threads=threads)


# --- the API: serve (in the VM), load / images / rmi (on the host) ------------------------------------------


def _url_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    fn = click.option("--config", "client_config", metavar="FILE", envvar="FSBRIDGE_CONFIG",
                      help="TOML file with `url` and `token_file` [env FSBRIDGE_CONFIG; default "
                           "~/.config/fsbridge/config.toml when it exists].")(fn)
    fn = click.option("--token-file", metavar="FILE", envvar="FSBRIDGE_TOKEN_FILE",
                      help="Bearer token for a TCP server [env FSBRIDGE_TOKEN_FILE; else the config file's].")(fn)
    fn = click.option("--url", metavar="URL", envvar="FSBRIDGE_URL",
                      help="unix:/path/to.sock or http://HOST:PORT [env FSBRIDGE_URL; else the config file's "
                           "`url`; else the local server's socket].")(fn)
    return fn


class _Bar:
    """A click progress bar on stderr (shown only on a terminal), used as progress(label, total)."""

    def __init__(self, label: str, total: int) -> None:
        self._bar = None
        if sys.stderr.isatty():
            self._bar = click.progressbar(length=total, label=label, file=sys.stderr, show_eta=True,
                                          show_percent=True)

    def __enter__(self) -> "_Bar":
        if self._bar is not None:
            self._bar.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)

    def update(self, n: int) -> None:
        if self._bar is not None:
            self._bar.update(n)


@cli.command("serve")
@click.option("--listen", metavar="ADDR", help="unix:PATH (default: /run/fsbridge/fsbridge.sock for root) or "
                                               "tcp:HOST:PORT (needs --token-file).")
@click.option("--store", metavar="DIR", default="/var/lib/fsbridge/store", show_default=True,
              help="The image store (an OCI image layout) for --backend builtin; podman stages uploads here.")
@click.option("--backend", type=click.Choice(["builtin", "podman"]), default="builtin", show_default=True,
              help="Where images land: the embedded store, or the VM's podman (FSBRIDGE_PODMAN sets its command).")
@mapping_options
@click.option("--mount", "mountpoint", metavar="MOUNTPOINT", callback=_absolute_vm_path,
              help="Read path references through the fsbridge mount at MOUNTPOINT (cached) instead of the raw share.")
@click.option("--token-file", metavar="FILE", help="Bearer token file (0600) for TCP; created if missing.")
@click.option("--debug", is_flag=True, help="Log every request in detail.")
@reports_errors
def serve_command(listen: str | None, store: str, backend: str, maps: tuple[Any, ...], config: str | None,
                  mountpoint: str | None, token_file: str | None, debug: bool) -> None:
    """Serve the fsbridge API in the VM: load images by path reference, or by upload when the path fails.

    A client sends the host path of an archive and its identity (size, mtime, xxh3-128); the server maps
    it to the VM (through --map/--config, or the shares in /proc/self/mountinfo), refuses anything
    outside an export, checks it is the same file while loading it, and otherwise answers 409 so that the
    client uploads. Runs in the foreground; stop it with Ctrl-C.

    \b
    Examples:
      fsbridge serve --map /Users=/Users --mount /mnt/host
      fsbridge serve --listen tcp:0.0.0.0:7780 --token-file /etc/fsbridge/token
      FSBRIDGE_PODMAN='podman --storage-driver vfs' fsbridge serve --backend podman
    """
    from fsbridge.fs.mount import configure_logging
    from fsbridge.mapping import MappingTable
    from fsbridge.server.app import Api
    from fsbridge.server.backends import make_backend
    from fsbridge.server.listen import parse_listen, read_token_file, serve

    configure_logging(debug)
    address = parse_listen(listen)
    token = read_token_file(token_file, create=True) if token_file else None
    table = MappingTable.load(maps, config)
    api = Api(make_backend(backend, store=store), table, mount=mountpoint, token=token)

    def ready(where: str) -> None:
        click.echo(f"fsbridge {__version__} serving on {where} (backend {backend}, "
                   f"{len(table.mappings)} mapped host folder(s))", err=True)

    serve(api, address, ready=ready)


def _print_images(images: list[dict[str, Any]]) -> None:
    for image in images:
        names = image.get("names") or []
        for name in names:
            click.echo(f"Loaded image: {name}")
        if not names:
            click.echo(f"Loaded image ID: {image['id']}")


@cli.command("load")
@click.argument("archive", type=click.Path(exists=True, dir_okay=False))
@_url_options
@click.option("--upload", "force_upload", is_flag=True, help="Skip the path reference: always upload the bytes.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object: via, images, why the path was refused.")
@reports_errors
def load_command(archive: str, url: str | None, token_file: str | None, client_config: str | None,
                 force_upload: bool, as_json: bool) -> None:
    """Load an image archive (docker-archive or oci-archive, plain, .gz or .zst) into the VM.

    Sends the archive's path and identity first; the server reads it through the share it already has.
    Only if the server cannot (not shared, not the same file, an older server) are the bytes uploaded.
    Prints each loaded image, then "via path" or "via upload".

    \b
    Examples:
      fsbridge load ~/images/app.tar
      fsbridge load app.tar.gz --upload
      fsbridge load app.tar --json | jq -r .via
    """
    from fsbridge.client import ApiClient, load_archive

    with ApiClient(url, token_file=token_file, config=client_config) as client:
        outcome = load_archive(client, archive, force_upload=force_upload,
                               progress=None if as_json else _Bar)
    if as_json:
        click.echo(json.dumps(outcome.to_json(), indent=2))
        return
    _print_images(outcome.images)
    if outcome.refused:
        click.echo(f"path refused ({outcome.refused['reason']}): {outcome.refused['message']}", err=True)
    click.echo(f"via {outcome.via}")


@cli.command("images")
@_url_options
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of {id, names, ...}.")
@reports_errors
def images_command(url: str | None, token_file: str | None, client_config: str | None, as_json: bool) -> None:
    """List the images the server holds.

    \b
    Example:
      fsbridge images --json | jq -r '.[].names[]'
    """
    from fsbridge.client import ApiClient

    with ApiClient(url, token_file=token_file, config=client_config) as client:
        images = client.images()
    if as_json:
        click.echo(json.dumps(images, indent=2))
        return
    click.echo(f"{'IMAGE ID':<14} {'SIZE':>10}  NAMES")
    for image in images:
        size = image.get("size")
        shown = f"{size / 1e6:.1f}MB" if isinstance(size, (int, float)) else "-"
        names = ", ".join(image.get("names") or []) or "<none>"
        click.echo(f"{image['id'].removeprefix('sha256:')[:12]:<14} {shown:>10}  {names}")


@cli.command("rmi")
@click.argument("refs", nargs=-1, required=True)
@_url_options
@reports_errors
def rmi_command(refs: tuple[str, ...], url: str | None, token_file: str | None,
                client_config: str | None) -> None:
    """Remove images from the server by name or id (blobs no other image uses are deleted).

    \b
    Example:
      fsbridge rmi localhost/app:1
    """
    from fsbridge.client import ApiClient

    with ApiClient(url, token_file=token_file, config=client_config) as client:
        for ref in refs:
            for image_id in client.remove(ref):
                click.echo(f"Untagged and removed: {image_id}")


@cli.command("check-store")
@click.argument("store", type=click.Path(exists=True, file_okay=False))
@reports_errors
def check_store_command(store: str) -> None:
    """Verify an image store: every blob's digest, and that the index names only complete images.

    Exits 0 when healthy, 1 with one line per problem otherwise.

    \b
    Example:
      fsbridge check-store /var/lib/fsbridge/store
    """
    from fsbridge.store import ImageStore

    problems = ImageStore(store).check()
    for problem in problems:
        click.echo(problem, err=True)
    if problems:
        raise FsbridgeError(f"{len(problems)} problem(s) in {store}", reason="store-damaged")
    click.echo(f"{store}: healthy")


# --- the benchmark: bench --------------------------------------------------------------------------------------


@cli.command("bench")
@click.argument("names", nargs=-1, metavar="[SCENARIO]...")
@click.option("--out", type=click.Path(file_okay=False), metavar="DIR",
              help="Where results.json, report.md and report.png go [default: bench/out/DATE-HOST].")
@click.option("--quick", is_flag=True,
              help="Small sizes and 2 runs of everything: a smoke run of about 2 minutes.")
@click.option("--runs", type=click.IntRange(min=1), metavar="N",
              help="Counted runs of every variant (all scenarios).")
@click.option("--warmup", type=click.IntRange(min=0), metavar="N",
              help="Uncounted warm-up rounds (all scenarios).")
@click.option("--share", default="emulate:9p-virtio", show_default=True, metavar="SPEC",
              help="The slow share: emulate:PROFILE[,latency-us=N,bandwidth-mib=N] (fsbridge emulate), "
                   "path:/mnt/9p (a real share; the fixtures are copied into a temporary folder on it), or "
                   "qemu-9p:MODE / qemu-virtiofs[:MODE] (a real VM boundary: a throw-away qemu guest whose "
                   "9p mount uses cache MODE none|loose|mmap|fscache, or virtiofs none|auto|always; "
                   ",memory-mb=N sizes the guest).")
@click.option("--set", "sets", multiple=True, metavar="SCENARIO.KEY=VALUE",
              help="Change a scenario's parameter or setting (runs, warmup, drop_caches, run_timeout_s, "
                   "time_bound_s); a comma list sweeps. Repeatable.")
@click.option("--scenarios", "scenarios_dir", type=click.Path(exists=True, file_okay=False), metavar="DIR",
              help="Read the scenario files (*.toml) from DIR instead of the ones shipped with fsbridge.")
@click.option("--compare", nargs=2, type=click.Path(exists=True, dir_okay=False), metavar="OLD.json NEW.json",
              help="Run nothing: show what changed between two results.json.")
@click.option("--list", "list_only", is_flag=True,
              help="Run nothing: list the scenarios and their parameters.")
@click.pass_context
@reports_errors
def bench_command(ctx: click.Context, names: tuple[str, ...], out: str | None, quick: bool, runs: int | None,
                  warmup: int | None, share: str, sets: tuple[str, ...], scenarios_dir: str | None,
                  compare: tuple[str, str] | None, list_only: bool) -> None:
    """Measure the cached mount and path-reference loads against the local disk and the raw share.

    Runs every variant of each SCENARIO (default: all) interleaved, round after round, with warm-up
    runs, cold caches where a variant needs them and a time bound; samples CPU, memory and I/O of every
    process involved; writes results.json (every raw run), report.md (median, p95, min-max, jitter,
    ratio to the baseline) and report.png. Cleans up every mount, server and temporary file, also on
    Ctrl-C. Exit status 1 when a variant failed (the report is still written). Needs /dev/fuse; run
    it as root so that cold runs can drop the page cache.

    \b
    Examples:
      fsbridge bench --quick                          # every scenario, small: about 2 minutes
      fsbridge bench                                  # the default suite: under 10 minutes
      fsbridge bench metadata-walk git-status --runs 5 --out /tmp/b
      fsbridge bench --share emulate:wsl2-drvfs       # another share model
      fsbridge bench --share path:/mnt/9p             # a real share
      fsbridge bench metadata-walk load-image --share qemu-9p:none   # across a real qemu guest
      fsbridge bench load-image --set load-image.size_mib=4096
      fsbridge bench metadata-walk --set metadata-walk.files=1000,10000,100000 \\
                     --set metadata-walk.time_bound_s=3600
      fsbridge bench --compare bench/out/A/results.json bench/out/B/results.json
      fsbridge bench --list
    """
    from fsbridge.bench.runner import command

    ctx.exit(command(names=names, out=out, quick=quick, runs=runs, warmup=warmup, share=share, sets=sets,
                     scenarios_dir=scenarios_dir, compare=compare, list_only=list_only))


def main() -> None:
    cli(prog_name="fsbridge")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
