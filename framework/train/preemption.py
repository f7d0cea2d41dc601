"""Stop signals: finish the current optimizer step, agree on where to stop, checkpoint, exit.

SLURM, Kubernetes and spot instances send SIGTERM (SLURM's `--signal` can send
SIGUSR1 earlier) some seconds before they kill a job. The handler only records
that a signal came; the loop asks `StopSignal.agreed()` once per optimizer step.

On several processes the signal does not reach every rank at the same step, so
the ranks must agree before any of them stops (a rank that stopped alone would
leave the others waiting in the next gradient all-reduce). Each step a rank
starts a non-blocking all-reduce(MAX) of its own flag on a CPU (gloo) group and
reads the one it started a step earlier, which has long completed: no
host-device sync and no wait in the training step. Every rank reads the same
result at the same step, so all stop after the same step: at most one optimizer
step after the last rank saw the signal (one process: right after the current step).
"""

from __future__ import annotations

import signal
from typing import Any, Optional

import torch
import torch.distributed as dist

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class StopSignal:
    """Records SIGTERM/SIGUSR1 while installed (a context manager) and agrees across processes to stop."""

    def __init__(self, num_processes: int):
        self.received: Optional[str] = None
        self._distributed = num_processes > 1 and dist.is_available() and dist.is_initialized()
        self._group: Any = None
        self._pending: Optional[tuple[Any, torch.Tensor]] = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "StopSignal":
        if self._distributed:
            # A CPU group: the flag never touches the GPU, so reading it never syncs the device.
            self._group = None if dist.get_backend() == "gloo" else dist.new_group(backend="gloo")
        for sig in STOP_SIGNALS:
            try:
                self._previous[sig] = signal.signal(sig, self._record)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
        if self._pending is not None:
            self._pending[0].wait()  # never leave a collective in flight behind us
            self._pending = None

    def _record(self, signum: int, frame: Any) -> None:
        if self.received is None:
            self.received = signal.Signals(signum).name

    def agreed(self) -> bool:
        """Call once per optimizer step on every process: whether all processes now stop after this step."""
        if not self._distributed:
            return self.received is not None
        stop = False
        if self._pending is not None:
            work, flag = self._pending
            work.wait()  # started a whole step ago: already done
            stop = bool(flag.item())  # a CPU tensor: no device sync
        flag = torch.tensor([int(self.received is not None)], dtype=torch.int32)
        self._pending = (dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self._group, async_op=True), flag)
        return stop
