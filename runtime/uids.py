"""One uid (and the gid of the same number) per sandbox, from a range no host account uses,
so per-user kernel limits (inotify instances, POSIX message queue bytes, RLIMIT_NPROC)
of one sandbox never touch another's or the host's.

A uid is held from create until destroy has removed the sandbox's cgroup: by then no
process can run as it (every process of a sandbox lives in that cgroup, and the cgroup
is empty before it can be removed). Freed uids go to the back of the queue, so the one
reused next is the one free the longest. Across service instances on one host, a uid
is also held by an flock on a file under LOCK_DIR, released by the kernel if the
holder dies."""

from __future__ import annotations

import collections
import fcntl
import os
import re
from dataclasses import dataclass
from pathlib import Path

DEFAULT_RANGE = "600000-659999"
LOCK_DIR = Path("/run/lock/wondercraft-uids")
_RANGE = re.compile(r"^\s*(\d+)\s*-\s*(\d+)\s*$")


class UidsExhausted(RuntimeError):
    """Every uid of the range is held by a sandbox (or by a process found running as it)."""


@dataclass(frozen=True)
class UidRange:
    first: int
    last: int

    @classmethod
    def parse(cls, text: str) -> UidRange:
        """ "FIRST-LAST", inclusive; refused with what was expected."""
        match = _RANGE.match(text) if isinstance(text, str) else None
        if not match:
            raise ValueError(f"a uid range FIRST-LAST (e.g. {DEFAULT_RANGE}), got {text!r}")
        first, last = int(match.group(1)), int(match.group(2))
        if not 1000 <= first <= last <= 4_294_967_294 or last - first + 1 < 16:
            raise ValueError(
                f"a uid range FIRST-LAST of at least 16 uids between 1000 and 4294967294, got {text!r}"
            )
        return cls(first, last)

    def __contains__(self, uid: int) -> bool:
        return self.first <= uid <= self.last

    def __str__(self) -> str:
        return f"{self.first}-{self.last}"

    @property
    def size(self) -> int:
        return self.last - self.first + 1


def accounts_in_range(
    uid_range: UidRange, passwd: Path = Path("/etc/passwd"), group: Path = Path("/etc/group")
) -> list[str]:
    """Host accounts and groups whose id lies in the range ("user NAME (UID)")."""
    found = []
    for kind, path in (("user", passwd), ("group", group)):
        try:
            lines = path.read_text().splitlines()
        except OSError:
            continue
        for line in lines:
            fields = line.split(":")
            if len(fields) > 2 and fields[2].isdigit() and int(fields[2]) in uid_range:
                found.append(f"{kind} {fields[0]} ({fields[2]})")
    return found


def running_uids(uid_range: UidRange, proc: Path = Path("/proc")) -> set[int]:
    """uids of the range some process runs as now (real, effective, saved or fs)."""
    found: set[int] = set()
    for entry in os.scandir(proc):
        if not entry.name.isdigit():
            continue
        try:
            with open(os.path.join(entry.path, "status"), "rb") as handle:
                for line in handle:
                    if line.startswith(b"Uid:"):
                        found.update(int(u) for u in line.split()[1:] if int(u) in uid_range)
                        break
        except OSError:
            continue
    return found


class UidAllocator:
    def __init__(self, uid_range: UidRange, lock_dir: Path = LOCK_DIR) -> None:
        accounts = accounts_in_range(uid_range)
        if accounts:
            raise ValueError(
                f"the sandbox uid range {uid_range} holds host accounts: {', '.join(accounts)}; "
                "choose a range no account uses"
            )
        self.range = uid_range
        self._lock_dir = lock_dir
        self._free: collections.deque[int] = collections.deque(range(uid_range.first, uid_range.last + 1))
        self._held: dict[int, int] = {}  # uid -> its lock file's fd
        self._scanned = False

    def _scan_once(self) -> None:
        # A process left running as one of these uids (a crashed run's) keeps it out of use.
        self._scanned = True
        busy = running_uids(self.range)
        if busy:
            self._free = collections.deque(u for u in self._free if u not in busy)
        self._lock_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self._lock_dir, 0o700)

    @property
    def in_use(self) -> int:
        return len(self._held)

    def allocate(self) -> int:
        if not self._scanned:
            self._scan_once()
        for _ in range(len(self._free)):
            uid = self._free.popleft()
            fd = os.open(self._lock_dir / str(uid), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                self._free.append(uid)  # another instance holds it; try it again later
                continue
            self._held[uid] = fd
            return uid
        raise UidsExhausted(
            f"all {self.range.size} sandbox uids ({self.range}) are in use; destroy a sandbox first"
        )

    def release(self, uid: int) -> None:
        """Give a uid back once nothing of its sandbox can remain (its cgroup is gone)."""
        fd = self._held.pop(uid, None)
        if fd is None:
            return
        os.close(fd)
        self._free.append(uid)
