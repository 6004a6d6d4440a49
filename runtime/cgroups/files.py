"""Small, fast readers and writers for cgroup control files, shared by both backends.

Control files are tiny and read or written whole; raw os.open/os.write keeps the
per-file cost to a few microseconds on the sandbox create/destroy hot path."""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Callable, Sequence

from .base import CgroupError


def write_value(path: str, value: str | int) -> None:
    """Write one value to a control file; the error names the file and the value."""
    data = str(value).encode()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise
    except OSError as e:
        raise CgroupError(f"cannot open {path} to write {value!r}: {e.strerror}") from e
    try:
        os.write(fd, data)
    except OSError as e:
        raise CgroupError(f"the kernel refused {value!r} in {path}: {e.strerror} (errno {e.errno})") from e
    finally:
        os.close(fd)


def read_text(path: str) -> str | None:
    """The file's text, or None when it does not exist (cgroup or file gone)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
        return b"".join(chunks).decode()
    except OSError as e:
        # ENODEV: the cgroup was removed between open and read.
        if e.errno in (errno.ENODEV, errno.ENOENT):
            return None
        raise
    finally:
        os.close(fd)


def read_int(path: str) -> int | None:
    """An integer file ("max" and missing files read as None)."""
    text = read_text(path)
    if text is None:
        return None
    text = text.strip()
    return None if text in ("", "max") else int(text)


def read_keyed(path: str) -> dict[str, int] | None:
    """A flat keyed file ("key value" per line, as cpu.stat or memory.events)."""
    text = read_text(path)
    if text is None:
        return None
    values = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if value:
            values[key] = int(value.split()[0])
    return values


def read_pids(path: str) -> list[int]:
    """The pids in a cgroup.procs file; [] when the cgroup is gone."""
    text = read_text(path)
    return [int(p) for p in text.split()] if text else []


def read_psi(path: str) -> dict[str, float] | None:
    """A pressure file as {"some_avg10": .., "some_total_us": .., "full_avg10": ..}."""
    text = read_text(path)
    if text is None:
        return None
    values: dict[str, float] = {}
    for line in text.splitlines():
        kind, *fields = line.split()
        for field in fields:
            key, _, value = field.partition("=")
            values[f"{kind}_{'total_us' if key == 'total' else key}"] = float(value)
    return values


def wait_until(condition: Callable[[], bool], timeout_s: float) -> bool:
    """Poll condition with a short, growing sleep; True once it holds, False at the deadline.

    The first checks come within a fraction of a millisecond, because a killed
    process usually leaves its cgroup almost at once."""
    deadline = time.monotonic() + timeout_s
    delay = 0.0002
    while True:
        if condition():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(delay)
        delay = min(delay * 2, 0.02)


def rmdir(path: str) -> bool:
    """Remove a cgroup directory; False if it was already gone."""
    try:
        os.rmdir(path)
    except FileNotFoundError:
        return False
    return True


def child_dirs(path: str) -> list[str]:
    """Names of the child cgroups of path ([] when path does not exist)."""
    try:
        with os.scandir(path) as entries:
            return sorted(e.name for e in entries if e.is_dir(follow_symlinks=False))
    except FileNotFoundError:
        return []


# What rmdir answers for a cgroup that still has processes or child cgroups.
BUSY = (errno.EBUSY, errno.ENOTEMPTY)


def remove_if_empty(paths: Sequence[str]) -> bool:
    """Remove each cgroup directory and its child cgroups, without killing anything; False
    when one is still busy (what was removed before stays removed)."""
    try:
        for path in paths:
            for child in child_dirs(path):
                rmdir(os.path.join(path, child))
            rmdir(path)
    except OSError as e:
        if e.errno in BUSY:
            return False
        raise
    return True


def remove_tree(
    paths: Sequence[str],
    *,
    attempts: int,
    kill: Callable[[], object],
    destroy_child: Callable[[str, str], None],
    pids_of: Callable[[str], list[int]],
    kill_first: bool = True,
    children_first: bool = False,
) -> None:
    """Remove a sandbox's cgroup directories (one per v1 hierarchy, or its v2 directory),
    retrying while the kernel answers busy. Each try kills the sandbox first (with kill_first
    false, the first try does not: a cgroup normally empty by then costs one rmdir), then
    removes the directories; after a killing try, the child cgroups of those still busy are
    destroyed (destroy_child(parent, name)) before the next. children_first destroys the
    children before every rmdir (their processes live in child cgroups). The last refusal,
    or any other error, is a CgroupError naming what was left."""
    for attempt in range(attempts):
        killed = kill_first or attempt > 0
        if killed:
            kill()
        if children_first:
            for path in paths:
                for child in child_dirs(path):
                    destroy_child(path, child)
        busy = []
        for path in paths:
            try:
                rmdir(path)
            except OSError as e:
                if e.errno not in BUSY or attempt == attempts - 1:
                    raise CgroupError(
                        f"cannot remove sandbox cgroup {path}: {e.strerror}; expected an empty cgroup "
                        f"after kill (children: {child_dirs(path)}, pids: {pids_of(path)})"
                    ) from e
                busy.append(path)
        if not busy:
            return
        if not killed:
            continue
        # Child cgroups made inside the sandbox (executions'), or a process that joined after
        # the kill looked: remove the children, then kill and retry.
        for path in busy:
            for child in child_dirs(path):
                destroy_child(path, child)
