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


def clock(seconds: float) -> str:
    """Return seconds as mm:ss, or h:mm:ss from an hour on (rounded to the second)."""
    total = max(0, round(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


def eta(done: int, total: int, elapsed: float) -> str:
    """Return "ETA mm:ss" of the `total - done` items left when `done` items took `elapsed` seconds (the mean rate).

    The learners' step and episode lines end with it (`step 40/200: loss 0.31 (12.0 s, ETA 00:48)`), as the generation
    stages' Progress lines end with theirs.
    """
    left = elapsed / done * (total - done) if done > 0 else 0.0
    return f"ETA {clock(left)}"
