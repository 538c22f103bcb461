"""Progress of transfers: byte counters that can take back a failed attempt, and the bar.

The bar appears with the first byte received and only moves forward, so retries and failures
never make it jump back or past what is there.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["Progress", "Counter", "ProgressBar", "ignore"]

#: Called with byte counts as they arrive (negative to take back a failed attempt's bytes).
Progress = Callable[[int], None]


def ignore(n: int) -> None:
    """A progress callback that does nothing."""


class Counter:
    """Passes byte counts on to a progress callback, and can take back what it passed."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.total = 0

    def __call__(self, n: int) -> None:
        self.progress(n)
        self.total += n

    def take_back(self) -> None:
        if self.total:
            self.progress(-self.total)
            self.total = 0


class ProgressBar:
    """A thread-safe tqdm byte bar over the series that need a transfer; ``cancel`` stops workers.

    The bar appears with the first byte received (none for an empty selection, a fully cached
    one, or one that fails before any transfer) and only moves forward: each series advances by
    what arrived for it, at most to its expected size (FileSize), and to that size when it is
    done; bytes a retry fetches again are not counted twice. A series that fails stays where
    its bytes left it (the bar says how many failed), and after a cancel (Ctrl-C) the bar does
    not move again: it never shows 100% for bytes that did not arrive.
    """

    def __init__(self, enabled: bool, expected: Mapping[str, int | None]) -> None:
        self.cancel = threading.Event()
        self._enabled = enabled
        self._lock = threading.Lock()
        self._bar: Any = None
        self._expected = dict(expected)  # uid -> bytes expected (None: unknown)
        sizes = list(self._expected.values())
        self._total = sum(int(s) for s in sizes) if None not in sizes else None
        self._shown: dict[str, int] = dict.fromkeys(self._expected, 0)
        self._failed = 0

    def advance(self, uid: str, received: int) -> None:
        """``received`` bytes of ``uid`` have arrived in its current attempt."""
        expected = self._expected.get(uid)
        self._show(uid, min(received, int(expected)) if expected is not None else received)

    def finish(self, uid: str, *, failed: bool = False) -> None:
        """``uid`` is done: count all of it; or it failed: count what arrived, and say so."""
        if failed:
            with self._lock:
                self._failed += 1
                if self._bar is not None:
                    self._bar.set_postfix_str(f"{self._failed} failed", refresh=False)
        elif uid in self._expected:
            expected = self._expected[uid]
            self._show(uid, int(expected) if expected is not None else self._shown[uid])

    def _show(self, uid: str, target: int) -> None:
        with self._lock:
            step = target - self._shown.get(uid, target)
            if step <= 0 or not self._enabled or self.cancel.is_set():
                return
            self._shown[uid] = target
            if self._bar is None:
                from tqdm.auto import tqdm

                self._bar = tqdm(total=self._total, unit="B", unit_scale=True,
                                 unit_divisor=1024, desc="series")
            self._bar.update(step)

    def close(self) -> None:
        with self._lock:
            if self._bar is not None:
                self._bar.close()

