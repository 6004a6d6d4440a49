"""The lower layer: the default skeleton over the host's system dirs, and the optional
debootstrap image from `make rootfs` in its place."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from runtime import mounts
from runtime.sandbox import SandboxSpec
from tests.sandboxes import SyncManager

REPO = Path(__file__).resolve().parent.parent
IMAGE = Path(os.environ.get("WONDERCRAFT_TEST_ROOTFS_IMAGE", REPO / "rootfs" / "build" / "debian"))


def test_skeleton_is_built_once_and_holds_no_host_secrets(tmp_path):
    lower = tmp_path / "lower"
    mounts.build_skeleton(lower)
    marker = lower / ".wondercraft-skeleton.json"
    first = marker.stat().st_mtime_ns
    mounts.build_skeleton(lower)
    assert marker.stat().st_mtime_ns == first  # reused, not rebuilt
    etc = {p.name for p in (lower / "etc").iterdir()}
    assert "shadow" not in etc and "ssh" not in etc and "sudoers" not in etc
    assert (lower / "etc" / "passwd").read_text().count("\n") == 2
    assert oct((lower / "tmp").stat().st_mode & 0o7777) == "0o1777"
    assert json.loads(marker.read_text())["image"] is None


def test_a_stale_skeleton_is_replaced_atomically(tmp_path):
    lower = tmp_path / "lower"
    mounts.build_skeleton(lower)
    (lower / ".wondercraft-skeleton.json").write_text('{"version": 0}')
    (lower / "stale-file").write_text("old")
    mounts.build_skeleton(lower)
    assert not (lower / "stale-file").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["lower"]  # no staging dirs left behind


@pytest.mark.skipif(
    not (IMAGE / "etc" / "debian_version").is_file(), reason="no image: `make rootfs` builds it"
)
def test_debootstrap_image_replaces_the_host_usr(tmp_path):
    sandboxes = SyncManager(tmp_path / "state", rootfs_image=IMAGE)
    try:
        sandbox = sandboxes.create(SandboxSpec(agent_id="image"))
        result = sandboxes.sh(
            sandbox, "ls /usr/bin | wc -l; python -I -S -c 'print(42)'; wc -l < /etc/passwd"
        )
        count, answer, passwd_lines = result.stdout.decode().split()
        assert int(count) == len(os.listdir(IMAGE / "usr" / "bin"))
        assert answer == "42" and passwd_lines == "2"
    finally:
        sandboxes.close()
