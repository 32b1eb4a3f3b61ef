"""Progress of long work: a tqdm bar on a terminal, plain log lines everywhere else.

``Progress`` counts the finished units of one task (videos drawn, training steps, evaluated frames,
finished trials). When stderr is a terminal and INFO lines are shown (no ``-q``), it draws a tqdm
bar; otherwise (a log file, a pipe, a Ray worker, whose stderr Ray redirects) it logs a line with
the count, the elapsed time and the ETA at most every ``interval`` seconds, at the end, and on every
``report``. So progress reaches Ray workers' logs as lines and never as bars.
"""

from __future__ import annotations

import logging
import sys
import time
from types import TracebackType

from tqdm import tqdm

#: seconds between two plain progress lines of the same task
LOG_INTERVAL_S = 30.0
_log = logging.getLogger("prunebench.progress")


def bars_shown(logger: logging.Logger) -> bool:
    """Whether to draw bars: stderr is a terminal and ``logger`` shows INFO lines."""
    return sys.stderr.isatty() and logger.isEnabledFor(logging.INFO)


def duration(seconds: float) -> str:
    """``3725`` → ``1h02m05s``; ``65`` → ``1m05s``; ``4.2`` → ``4s``."""
    total = int(round(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m{secs:02d}s"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class Progress:
    """The progress of one task of ``total`` units (None: unknown), as a bar or as log lines (see the module).

    ``interval=None`` logs only on ``report`` (e.g. training, which reports every
    logging window). ``initial`` units are already done (a resumed task); the ETA counts only this
    session's rate.
    """

    def __init__(self, desc: str, total: int | None, unit: str = "items", interval: float | None = LOG_INTERVAL_S,
                 initial: int = 0, logger: logging.Logger = _log):
        self.desc, self.total, self.unit, self.interval, self.logger = desc, total, unit, interval, logger
        self.count = self._start_count = initial
        self._start = self._last_line = time.monotonic()
        self._bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, leave=False, dynamic_ncols=True,
                         file=sys.stderr, disable=not bars_shown(logger))

    def eta(self) -> float | None:
        """Seconds left at this session's rate; None while unknown."""
        done = self.count - self._start_count
        if self.total is None or done <= 0:
            return None
        return (time.monotonic() - self._start) / done * max(0, self.total - self.count)

    def describe(self, status: str = "") -> str:
        """``train dense 50/1500 steps, loss 0.31 (12s elapsed, ETA 5m48s)``."""
        count = f"{self.count}/{self.total}" if self.total is not None else str(self.count)
        eta = self.eta()
        timing = f"{duration(time.monotonic() - self._start)} elapsed" + ("" if eta is None else f", ETA {duration(eta)}")
        return f"{self.desc} {count} {self.unit}{', ' + status if status else ''} ({timing})"

    def update(self, n: int = 1) -> None:
        """``n`` more units done: the bar moves; a line is logged when ``interval`` has passed or the task is done."""
        self.count += n
        if not self._bar.disable:
            self._bar.update(n)
            return
        if self.interval is None:
            return
        if time.monotonic() - self._last_line >= self.interval or self.count == self.total:
            self._line("")

    def report(self, status: str) -> None:
        """Show ``status`` now: beside the bar, or as a log line with the count and the ETA."""
        if not self._bar.disable:
            self._bar.set_postfix_str(status)
        else:
            self._line(status)

    def _line(self, status: str) -> None:
        self._last_line = time.monotonic()
        self.logger.info("%s", self.describe(status))

    def close(self) -> None:
        """Remove the bar (no-op without one)."""
        self._bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

