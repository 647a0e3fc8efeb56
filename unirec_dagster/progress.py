"""Progress lines with rate and ETA for long loops, written through any logging callable."""

from __future__ import annotations

import time
from collections.abc import Callable


class Progress:
    """Call `advance(n)` as work is done; logs at most every `every_s` seconds and at the end."""

    def __init__(self, total: int, unit: str, log: Callable[[str], None] | None, label: str = "", every_s: float = 5.0):
        self.total = total
        self.unit = unit
        self.log = log
        self.label = label
        self.every_s = every_s
        self.done = 0
        self.start = time.perf_counter()
        self._last = self.start

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def advance(self, n: int = 1, note: str = "") -> None:
        self.done += n
        now = time.perf_counter()
        if self.log and (now - self._last >= self.every_s or self.done >= self.total):
            self._last = now
            rate = self.done / max(now - self.start, 1e-9)
            eta = (self.total - self.done) / rate if rate > 0 else float("inf")
            prefix = f"{self.label}: " if self.label else ""
            suffix = f" ({note})" if note else ""
            self.log(
                f"{prefix}{self.done:,}/{self.total:,} {self.unit} in {now - self.start:.1f}s,"
                f" {rate:,.1f} {self.unit}/s, ETA {eta:.0f}s{suffix}"
            )
