"""What a throw-away guest needs on the host: qemu, a Debian kernel, and a tiny busybox initramfs.

The guest is a real VM boundary for tests and benchmarks: the host's folders reach it over virtio-9p (or
virtiofs), as in podman machine or Lima. Nothing is installed into the host's /boot: Debian's kernel
package is downloaded with `apt-get download` and unpacked with `dpkg -x` into a cache folder
(``~/.cache/fsbridge/guest``), once. The initramfs holds only busybox, the few modules the guest needs
(virtio, 9p, fuse, virtiofs, virtio-net, virtio-rng) and `/init`; the guest's userland is the host's own
`/`, mounted read-only over 9p, so python and the project's virtualenv are at the same paths inside.

`ensure_guest_assets()` installs the Debian packages that are missing (qemu-system-x86, seabios for the
firmware, busybox-static, cpio, kmod for depmod) and raises `GuestUnavailable` with a one-line reason
when it cannot: not root and no passwordless sudo, no apt-get, no network to the mirror.
"""

from __future__ import annotations

import fcntl
import hashlib
import lzma
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from fsbridge.errors import FsbridgeError

# Modules the guest loads, in this order after their dependencies (from the kernel's modules.dep).
GUEST_MODULES = ("virtio_pci", "virtio-rng", "9pnet_virtio", "9p", "fuse", "virtiofs", "virtio_net")
# Debian packages and the file each one provides (present file = nothing to install).
PACKAGES = {
    "qemu-system-x86": "/usr/bin/qemu-system-x86_64",
    "seabios": "/usr/share/seabios/bios-256k.bin",
    "busybox-static": "/bin/busybox",
    "cpio": "/usr/bin/cpio",
    "kmod": "/usr/sbin/depmod",
}
VIRTIOFSD = "/usr/lib/qemu/virtiofsd"  # shipped with qemu-system-common in Debian 12; optional


class GuestError(FsbridgeError):
    reason = "guest-failed"


class GuestUnavailable(GuestError):
    """The guest cannot be prepared on this machine (a reason to skip, not a bug)."""

    reason = "guest-unavailable"


@dataclass(frozen=True)
class GuestAssets:
    qemu: str
    kernel: Path  # vmlinuz
    initrd: Path  # uncompressed newc cpio: unpacking gzip costs seconds under TCG
    kernel_release: str  # e.g. 6.1.0-57-amd64
    virtiofsd: str | None
    cache_dir: Path


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "fsbridge" / "guest"


def ensure_guest_assets(cache_dir: Path | None = None) -> GuestAssets:
    """Everything needed to boot a guest, installed or built if missing (idempotent, safe to call often)."""
    cache_dir = cache_dir or cache_root()
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise GuestUnavailable(f"cannot create the guest cache folder {cache_dir}: {e.strerror}") from None
    with _locked(cache_dir / ".lock"):
        _ensure_packages()
        release, tree = _ensure_kernel(cache_dir)
        initrd = _ensure_initramfs(cache_dir, release, tree)
    virtiofsd = VIRTIOFSD if os.access(VIRTIOFSD, os.X_OK) else None
    return GuestAssets(
        qemu=PACKAGES["qemu-system-x86"],
        kernel=tree / "boot" / f"vmlinuz-{release}",
        initrd=initrd,
        kernel_release=release,
        virtiofsd=virtiofsd,
        cache_dir=cache_dir,
    )


class _locked:
    """An exclusive lock on a file, so two test processes do not unpack into the same folder at once."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __enter__(self) -> None:
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(self.fd, fcntl.LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)


# --- Debian packages ----------------------------------------------------------------------------------


def _privileged(argv: list[str]) -> list[str]:
    if os.geteuid() == 0:
        return argv
    if shutil.which("sudo"):
        return ["sudo", "-n", *argv]
    raise GuestUnavailable(f"needs root to run {' '.join(argv[:3])} (not root, no sudo)")


def _apt(argv: list[str], what: str, *, cwd: Path | None = None) -> None:
    """Run an apt-get command; on failure refresh the package lists once and retry."""
    if not shutil.which("apt-get"):
        raise GuestUnavailable(f"{what}: apt-get not found (install qemu-system-x86, busybox-static, cpio "
                               "and kmod by hand on this system)")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    last = ""
    for attempt in range(2):
        if attempt:
            subprocess.run(_privileged(["apt-get", "update", "-qq"]), env=env, capture_output=True, timeout=600)
        try:
            done = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=1200)
        except subprocess.TimeoutExpired:
            raise GuestUnavailable(f"{what}: apt-get took longer than 20 minutes") from None
        if done.returncode == 0:
            return
        last = (done.stderr.strip() or done.stdout.strip()).splitlines()[-1:] or [f"exit {done.returncode}"]
        last = last[0]
    raise GuestUnavailable(f"{what}: {last}")


def _ensure_packages() -> None:
    missing = [pkg for pkg, path in PACKAGES.items() if not os.path.exists(path)]
    if missing:
        _apt(_privileged(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing]),
             f"installing {' '.join(missing)}")
    still = [path for path in PACKAGES.values() if not os.path.exists(path)]
    if still:
        raise GuestUnavailable(f"installed, but still missing: {', '.join(still)}")


# --- the kernel ---------------------------------------------------------------------------------------


def _current_kernel_package() -> str | None:
    """The kernel package Debian's linux-image-amd64 currently points at, e.g. linux-image-6.1.0-57-amd64."""
    if not shutil.which("apt-cache"):
        return None
    done = subprocess.run(["apt-cache", "depends", "linux-image-amd64"], capture_output=True, text=True,
                          timeout=120)
    found = re.findall(r"Depends:\s*(linux-image-[0-9][\w.+-]*-amd64)\b", done.stdout)
    return found[0] if found else None


def _unpacked_kernels(cache_dir: Path) -> list[tuple[str, Path]]:
    out = []
    for stamp in cache_dir.glob("kernel-*/.complete"):
        release = stamp.parent.name.removeprefix("kernel-")
        out.append((release, stamp.parent))
    return sorted(out, key=lambda item: [int(n) if n.isdigit() else n for n in re.split(r"(\d+)", item[0])])


def _ensure_kernel(cache_dir: Path) -> tuple[str, Path]:
    """Download and unpack Debian's current amd64 kernel once; reuse any unpacked one when offline."""
    have = dict(_unpacked_kernels(cache_dir))
    package = _current_kernel_package()
    if package is None:
        if have:
            release = list(have)[-1]
            return release, have[release]
        raise GuestUnavailable("no Debian kernel package found (apt-cache depends linux-image-amd64)")
    release = package.removeprefix("linux-image-")
    if release in have:
        return release, have[release]
    tree = cache_dir / f"kernel-{release}"
    with tempfile.TemporaryDirectory(dir=cache_dir, prefix=".download-") as tmp:
        try:
            _apt(["apt-get", "download", "-qq", package], f"downloading {package}", cwd=Path(tmp))
        except GuestUnavailable:
            if have:  # an older kernel is better than none
                older = list(have)[-1]
                return older, have[older]
            raise
        debs = list(Path(tmp).glob("*.deb"))
        if not debs:
            raise GuestUnavailable(f"apt-get download {package} produced no .deb")
        shutil.rmtree(tree, ignore_errors=True)
        staging = Path(tmp) / "tree"
        subprocess.run(["dpkg-deb", "-x", str(debs[0]), str(staging)], check=True, capture_output=True)
        if not (staging / "boot" / f"vmlinuz-{release}").exists():
            raise GuestUnavailable(f"{debs[0].name} holds no boot/vmlinuz-{release}")
        # The package has no modules.dep (its postinst makes it): make it here, inside the cache.
        depmod = subprocess.run(["depmod", "-b", str(staging), release], capture_output=True, text=True)
        if depmod.returncode != 0:
            raise GuestUnavailable(f"depmod failed: {depmod.stderr.strip()[-300:]}")
        (staging / ".complete").write_text(package + "\n")
        staging.rename(tree)
    return release, tree


# --- the initramfs ------------------------------------------------------------------------------------


def init_script() -> str:
    return resources.files("fsbridge.bench").joinpath("guest_init.sh").read_text()


def module_order(tree: Path, release: str, wanted: tuple[str, ...] = GUEST_MODULES) -> list[str]:
    """Module files (relative to lib/modules/RELEASE) for `wanted`, each after the modules it needs."""
    moddir = tree / "lib" / "modules" / release
    deps: dict[str, list[str]] = {}
    for line in (moddir / "modules.dep").read_text().splitlines():
        target, _, needs = line.partition(":")
        deps[target] = needs.split()
    by_name = {}
    for path in deps:
        name = os.path.basename(path).split(".ko")[0]
        by_name[name] = path
        by_name.setdefault(name.replace("-", "_"), path)
    builtin = (moddir / "modules.builtin").read_text() if (moddir / "modules.builtin").exists() else ""
    order: list[str] = []

    def visit(path: str) -> None:
        if path in order:
            return
        for dep in reversed(deps.get(path, [])):  # modules.dep lists the deepest dependency last
            visit(dep)
        order.append(path)

    for name in wanted:
        path = by_name.get(name) or by_name.get(name.replace("-", "_"))
        if path is None:
            if re.search(rf"/{re.escape(name)}\.ko", builtin):
                continue  # built into this kernel
            raise GuestUnavailable(f"kernel {release} has no module {name}")
        visit(path)
    return order


def _ensure_initramfs(cache_dir: Path, release: str, tree: Path) -> Path:
    """Build (once per content) an uncompressed cpio: busybox, the modules in load order, /init."""
    busybox = Path(PACKAGES["busybox-static"])
    script = init_script()
    modules = module_order(tree, release)
    key = hashlib.sha256()
    for part in (release, script, "\n".join(modules), str(busybox.stat().st_size), str(busybox.stat().st_mtime_ns)):
        key.update(part.encode() + b"\0")
    out = cache_dir / f"initramfs-{release}-{key.hexdigest()[:16]}.cpio"
    if out.exists():
        return out
    for old in cache_dir.glob(f"initramfs-{release}-*.cpio"):
        old.unlink(missing_ok=True)
    moddir = tree / "lib" / "modules" / release
    with tempfile.TemporaryDirectory(dir=cache_dir, prefix=".initramfs-") as tmp:
        root = Path(tmp) / "root"
        for d in ("bin", "dev", "proc", "sys", "ctl", "newroot", "modules"):
            (root / d).mkdir(parents=True)
        shutil.copy2(busybox, root / "bin" / "busybox")
        names = []
        for rel in modules:
            name = os.path.basename(rel)
            data = (moddir / rel).read_bytes()
            if name.endswith(".xz"):  # busybox insmod takes plain ELF only
                data, name = lzma.decompress(data), name[:-3]
            elif name.endswith(".zst"):
                import zstandard

                data, name = zstandard.ZstdDecompressor().decompressobj().decompress(data), name[:-4]
            (root / "modules" / name).write_bytes(data)
            names.append(name)
        (root / "modules" / "order").write_text("\n".join(names) + "\n")
        (root / "init").write_text(script)
        (root / "init").chmod(0o755)
        listing = subprocess.run(["find", ".", "-mindepth", "1"], cwd=root, capture_output=True, check=True).stdout
        partial = Path(tmp) / "initramfs.cpio"
        with open(partial, "wb") as f:
            done = subprocess.run(["cpio", "-o", "-H", "newc", "--quiet", "-R", "0:0"], cwd=root, input=listing,
                                  stdout=f, stderr=subprocess.PIPE)
        if done.returncode != 0:
            raise GuestUnavailable(f"cpio failed: {done.stderr.decode(errors='replace').strip()[-300:]}")
        partial.rename(out)
    return out
