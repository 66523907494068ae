"""A first real mount: the fixture works and the tree shows host paths at their own names."""

from __future__ import annotations

import os
from pathlib import Path


def test_host_folder_appears_at_its_host_path(bridge: tuple[Path, Path, object]) -> None:
    backing, view, _ = bridge
    (backing / "hello.txt").write_text("hi")
    assert (view / "hello.txt").read_text() == "hi"
    assert os.listdir(view.parent.parent) == ["host"]
    assert os.listdir(view.parent) == ["data"]
    (view / "made-here").write_text("through the mount")
    assert (backing / "made-here").read_text() == "through the mount"
