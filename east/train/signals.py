"""Pre-emption signals: SIGTERM/SIGUSR1 (SLURM) set a flag the loop reads between steps."""

from __future__ import annotations

import signal
import threading
from typing import Any


class StopSignals:
    """SIGTERM/SIGUSR1 (SLURM pre-emption) set a flag; the loop finishes the step, saves a
    checkpoint and exits 75. Installed only in the main thread; restored on exit."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, _frame: Any) -> None:
        self.received = signum

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *_exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    @property
    def name(self) -> str:
        return signal.Signals(self.received).name if self.received else ""

