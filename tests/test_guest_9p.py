"""The mount over a real 9p share, across a real VM boundary: a qemu guest sees a host folder over virtio-9p
(cache=none, as podman machine mounts it) and runs the mount's correctness checks there.

One guest boot serves the whole module (fsbridge/bench/guest.py; about 6 s of boot under TCG). Inside it,
tests/guest_checks.py starts `fsbridge mount` over the share and compares every operation through the mount
with the same operation on raw 9p; while it runs, this process plays the host: when the guest asks, it
changes files in the shared folder on the host side, and the guest checks that the mount hides the change
until `fsbridge invalidate` and shows it after. Each check's result is asserted here on its own.

Skipped only where the guest cannot be prepared (qemu or Debian's kernel cannot be installed: no apt-get,
no root, no network to the mirror); a guest that fails to boot or a check that fails is a test failure.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from guest_checks import CHECKS, DONE, REQUEST, host_change, seed_share

from fsbridge.bench.guest import GuestRun, GuestTimeout, Share, run_in_guest
from fsbridge.bench.guest_assets import GuestUnavailable, ensure_guest_assets

pytestmark = pytest.mark.slow

CHECKS_SCRIPT = Path(__file__).with_name("guest_checks.py")
DEADLINE_S = 240


@dataclass
class GuestOutcome:
    run: GuestRun
    results: dict
    host_changed: bool


class HostSide:
    """The host's part while the guest runs: change inv/ on the host when the guest asks, once."""

    def __init__(self, share: Path) -> None:
        self.share = share
        self.changed = False

    def poll(self) -> None:
        if not self.changed and (self.share / ".sync" / REQUEST).exists():
            host_change(self.share)
            self.changed = True
            partial = self.share / ".sync" / (DONE + ".partial")
            partial.write_text("done\n")
            partial.rename(self.share / ".sync" / DONE)


@pytest.fixture(scope="module")
def guest(tmp_path_factory: pytest.TempPathFactory) -> GuestOutcome:
    try:
        assets = ensure_guest_assets()
    except GuestUnavailable as e:
        pytest.skip(f"no qemu guest on this machine: {e.message}")
    share = tmp_path_factory.mktemp("guest-share")
    seed_share(share)
    out = share / "results.json"
    host = HostSide(share)
    try:
        run = run_in_guest([sys.executable, str(CHECKS_SCRIPT), "--share", str(share), "--out", str(out)],
                           shares=[Share(str(share))], cache="none", deadline_s=DEADLINE_S,
                           while_running=host.poll, assets=assets)
    except GuestTimeout as e:
        pytest.fail(f"{e.message}\n--- output ---\n{e.run.output[-3000:]}\n--- console ---\n{e.run.console[-2000:]}")
    assert out.exists(), f"the guest wrote no results (exit {run.exit_code}):\n{run.output[-3000:]}"
    results = json.loads(out.read_text())
    print(f"\nguest: accel={run.accel} boot={run.boot_s:.1f}s command={run.command_s:.1f}s "
          f"total={run.total_s:.1f}s notes={run.accel_notes}\nguest timings: {results.get('timings')}")
    return GuestOutcome(run, results, host.changed)


def test_guest_ran_the_checks(guest: GuestOutcome) -> None:
    run = guest.run
    assert run.accel in ("kvm", "tcg")
    assert run.exit_code is not None, run.console[-2000:]
    missing = [name for name in CHECKS if name not in guest.results["checks"]]
    assert not missing, f"checks that did not report: {missing}\n{run.output[-3000:]}"
    failed = [name for name, r in guest.results["checks"].items() if not r["ok"]]
    assert (run.exit_code == 0) == (not failed), f"exit {run.exit_code} but failed checks {failed}"


def test_the_host_made_its_change(guest: GuestOutcome) -> None:
    assert guest.host_changed, "the guest never asked the host to change inv/ (invalidation not exercised)"


@pytest.mark.parametrize("name", CHECKS)
def test_check(guest: GuestOutcome, name: str) -> None:
    result = guest.results["checks"].get(name)
    assert result is not None, f"check {name} did not run:\n{guest.run.output[-3000:]}"
    assert result["ok"], f"{name} failed inside the guest (9p cache=none, {guest.run.accel}):\n{result['detail']}"
