"""A progress bar that redraws one line on a terminal and prints plain, throttled lines elsewhere
(CI logs, pipes), so progress is readable in both."""

from __future__ import annotations

import sys
import time
from typing import Protocol


class Stream(Protocol):
    """What a bar draws on: a text file such as sys.stderr, or any object with these methods."""

    def write(self, text: str, /) -> object: ...

    def flush(self) -> None: ...

    def isatty(self) -> bool: ...


def format_duration(seconds: float | None) -> str:
    if seconds is None or seconds != seconds or seconds == float("inf"):
        return "?"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class ProgressBar:
    """`update(done, total)` as often as you like; the bar decides when to draw."""

    def __init__(self, label: str, unit: str = "docs", stream: Stream | None = None, tty: bool | None = None,
                 interval: float = 2.0, width: int = 24):
        self.label, self.unit, self.width = label, unit, width
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        # A terminal can take frequent redraws; a log file gets a line every `interval` seconds at most.
        self.interval = 0.1 if self.tty else interval
        self.started = time.monotonic()
        self._last_draw = 0.0
        self._last_text = ""
        self._drawn = False

    def render(self, done: float, total: int, note: str = "") -> str:
        if not total:  # the total is not known yet (a job still queued, a walk not done): no bar to fill
            text = f"{self.label} [{'.' * self.width}] {int(done)} {self.unit}"
            return f"{text}  {note}" if note else text
        elapsed = max(time.monotonic() - self.started, 1e-6)
        rate = done / elapsed
        remaining = (total - done) / rate if rate > 0 else None
        frac = min(done / total, 1.0)
        filled = int(round(frac * self.width))
        bar = "#" * filled + "-" * (self.width - filled)
        text = (f"{self.label} [{bar}] {int(done)}/{total} {self.unit} {frac:4.0%} "
                f"{rate:.1f} {self.unit}/s ETA {format_duration(remaining if done < total else 0)}")
        return f"{text}  {note}" if note else text

    def update(self, done: float, total: int, note: str = "", force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_draw < self.interval:
            return
        text = self.render(done, total, note)
        if not self.tty and text == self._last_text and not force:
            return
        if self.tty:
            self.stream.write("\r" + text + "\x1b[K")
        else:
            self.stream.write(text + "\n")
        self.stream.flush()
        self._last_draw, self._last_text, self._drawn = now, text, True

    def close(self) -> None:
        """End the bar's line on a terminal, so what follows starts on a fresh one."""
        if self.tty and self._drawn:
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = False
