"""Progress output of a training run: a tqdm bar on a terminal, lines in a log."""

from __future__ import annotations

import sys
import time
from typing import Any

from torch import Tensor


class Progress:
    """A tqdm bar on a terminal; otherwise one line every ``log_every`` steps (SLURM logs).
    Silent on ranks other than 0."""

    def __init__(self, *, label: str, total: int, start: int, log_every: int, enabled: bool,
                 tty: bool | None = None, stream: Any = None) -> None:
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.label = label
        self.total = total
        self.log_every = max(1, log_every)
        tty = self.stream.isatty() if tty is None else tty
        self.bar = None
        if enabled and tty:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=start, desc=label, file=self.stream,
                            dynamic_ncols=True, leave=False)
        self._window_start = time.perf_counter()
        self._window_loss: Tensor | float = 0.0
        self._window_count = 0

    def step(self, step: int, epoch: int, epochs: int, loss: Tensor, count: int,
             lr: float) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(1)
            if step % self.log_every == 0:
                self.bar.set_postfix(epoch=f"{epoch + 1}/{epochs}",
                                     loss=f"{float(loss) / max(count, 1):.4f}", lr=f"{lr:.4g}")
            return
        # Summed on the device; read (one sync) only when a line is due.
        self._window_loss = self._window_loss + loss
        self._window_count += count
        if step % self.log_every == 0 or step == self.total:
            elapsed = max(time.perf_counter() - self._window_start, 1e-9)
            self.write(
                f"{self.label} epoch {epoch + 1}/{epochs} step {step}/{self.total} "
                f"loss {float(self._window_loss) / max(self._window_count, 1):.4f} "
                f"lr {lr:.4g} {self._window_count / elapsed:.0f} img/s"
            )
            self._window_start = time.perf_counter()
            self._window_loss, self._window_count = 0.0, 0

    def write(self, line: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(line, file=self.stream)
        else:
            print(line, file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

