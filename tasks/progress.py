"""Progress lines for long stages: items done / total with elapsed time and an ETA, about ten lines per stage."""

from __future__ import annotations

import time
from collections.abc import Callable


class Progress:
    """Counts finished items of one stage and prints a line each time another tenth of the total is done.

    Printed lines reach the Prefect run's log (the flows set log_prints) and the terminal of `maskforge generate`.
    """

    def __init__(self, what: str, total: int, unit: str = "items", emit: Callable[[str], None] = print) -> None:
        """Start the clock for `total` items of `what` (e.g. "red disc: diffusion")."""
        self.what, self.total, self.unit, self.emit = what, max(int(total), 0), unit, emit
        self.done = 0
        self.start = time.perf_counter()
        self._next = self._step()

    def _step(self) -> int:
        """The count at which the next line is printed (every tenth, at least every item)."""
        return min(self.total, self.done + max(1, -(-self.total // 10)))

    def advance(self, n: int = 1, note: str = "") -> None:
        """Record n more finished items; print a line when another tenth (or the last item) is reached."""
        self.done = min(self.total, self.done + n)
        if self.done < self._next and self.done < self.total:
            return
        elapsed = time.perf_counter() - self.start
        eta = elapsed / self.done * (self.total - self.done) if self.done else 0.0
        extra = f", {note}" if note else ""
        self.emit(f"{self.what}: {self.done}/{self.total} {self.unit}{extra} ({elapsed:.0f} s, ETA {eta:.0f} s)")
        self._next = self._step()
