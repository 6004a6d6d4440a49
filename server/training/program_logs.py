"""What a learn program prints: one JSON progress line per epoch on stderr (the cycle's
progress and its epochs), and everything else, kept capped, as the cycle's `logs`."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from dataclasses import dataclass

from .jobs import finite_or_none

LOG_LIMIT_CHARS = 16 * 1024  # of the cycle's logs, the tail is kept
MAX_EPOCHS = 10_000


@dataclass(frozen=True)
class Progress:
    epoch: int = 0
    epochs: int = 0
    loss: float | None = None
    accuracy: float | None = None

    def as_json(self) -> dict:
        return {"epoch": self.epoch, "epochs": self.epochs, "loss": self.loss, "accuracy": self.accuracy}


class ProgramLogs:
    def __init__(self, on_progress: Callable[[Progress], None]) -> None:
        self._on_progress = on_progress
        self._stderr: list[str] = []
        self._stderr_chars = 0
        self._stdout = ""
        self.epochs: list[dict] = []

    def stderr_line(self, line: str) -> None:
        if line.startswith('{"progress"') and self._progress(line):
            return
        self._stderr.append(line)
        self._stderr_chars += len(line) + 1
        while self._stderr_chars > LOG_LIMIT_CHARS and len(self._stderr) > 1:
            self._stderr_chars -= len(self._stderr.pop(0)) + 1

    def _progress(self, line: str) -> bool:
        with contextlib.suppress(ValueError, KeyError, TypeError, AttributeError):
            entry = json.loads(line)["progress"]
            progress = Progress(
                int(entry["epoch"]),
                int(entry.get("epochs") or 0),
                finite_or_none(entry.get("loss")),  # a diverging cycle reports NaN; JSON has none
                finite_or_none(entry.get("accuracy")),
            )
            self._on_progress(progress)
            if len(self.epochs) < MAX_EPOCHS:
                self.epochs.append(
                    {"epoch": progress.epoch, "loss": progress.loss, "accuracy": progress.accuracy}
                )
            return True
        return False

    def stdout(self, data: bytes) -> None:
        self._stdout = data[-LOG_LIMIT_CHARS:].decode(errors="replace")

    def text(self) -> str:
        """stdout's tail, then stderr's (progress lines left out), at most ~2 x LOG_LIMIT_CHARS."""
        stderr = "\n".join(self._stderr)[-LOG_LIMIT_CHARS:]
        return "".join(part for part in (self._stdout, "\n" if self._stdout and stderr else "", stderr))
