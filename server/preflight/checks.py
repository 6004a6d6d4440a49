"""What every preflight check returns: a pass, warn or fail, with the fix."""

from __future__ import annotations

from dataclasses import asdict, dataclass

PASS, WARN, FAIL = "pass", "warn", "fail"


@dataclass
class Check:
    check: str
    status: str  # pass, warn or fail
    detail: str
    fix: str = ""

    def to_json(self) -> dict:
        return asdict(self)
