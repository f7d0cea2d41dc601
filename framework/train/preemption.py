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
An evaluation asks the same agreement once per batch (every process runs as many
evaluation batches), so a signal stops it within a batch or two: the evaluation is
abandoned on every process together and redone by the resumed run.

Outside training (preparing the data, setting up, predicting) there is no step to
finish and nothing to checkpoint: `StopAtOnce` turns the signal into an immediate
`Preempted` with a line saying what was (not) lost.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from datetime import timedelta
from typing import Any, Callable, Optional

import torch
import torch.distributed as dist

from framework.core.errors import EXIT_PREEMPTED, Preempted

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class _HandledSignals:
    """How many stop signals a Python-level handler (StopSignal's or StopAtOnce's) has run for, in this process;
    and whether training has ended by an exception that is on its way out (a failure, or its own stop)."""

    count = 0
    training_raised = False


_HANDLED = _HandledSignals()


class StopSignal:
    """Records SIGTERM/SIGUSR1 while installed (a context manager) and agrees across processes to stop."""

    def __init__(self, num_processes: int, timeout_s: Optional[int] = None):
        self.received: Optional[str] = None
        self._timeout_s = timeout_s  # of the CPU group made beside an NCCL one (--ddp_timeout)
        self._distributed = num_processes > 1 and dist.is_available() and dist.is_initialized()
        self._group: Any = None
        self._pending: Optional[tuple[Any, torch.Tensor]] = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "StopSignal":
        _HANDLED.training_raised = False
        if self._distributed:
            # A CPU group of its own: the flag never touches the GPU (reading it never syncs the device), and
            # `__exit__` can tear the group down (see there).
            timeout = None if self._timeout_s is None else timedelta(seconds=self._timeout_s)
            self._group = dist.new_group(backend="gloo", timeout=timeout)
        for sig in STOP_SIGNALS:
            try:
                self._previous[sig] = signal.signal(sig, self._record)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def __exit__(self, *exc: Any) -> None:
        # Set before StopAtOnce's handler is back: a signal from here on (the launcher's SIGTERM to the processes
        # left when one died) must not replace the exception that ended training with a "stopped" line.
        _HANDLED.training_raised = exc[0] is not None
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
        pending, self._pending = self._pending, None
        if pending is not None:
            try:
                pending[0].wait()  # never leave a collective in flight behind us
            except Exception:
                if exc[0] is None:
                    raise
                # Training is already failing (a process left the job, a collective timed out): that error, not
                # this flag's echo of it, is the one to report.
        if self._group is not None:
            # A gloo worker thread signals a collective done before it drops its own reference to it; if that
            # reference is the last, the thread frees the collective's tensors, which needs the GIL, and a thread
            # that asks for the GIL while the interpreter exits is ended mid-destructor: `terminate called
            # without an active exception` (SIGABRT) after a successful run, seen in 1 of ~50 two-process runs on
            # a busy machine. So this thread keeps `pending` while the group is destroyed (its destructor joins
            # its worker threads, which then have nothing of ours to free) and frees it itself afterwards.
            dist.destroy_process_group(self._group)
            self._group = None
        del pending

    def _record(self, signum: int, frame: Any) -> None:
        _HANDLED.count += 1
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

    def agreed_now(self) -> bool:
        """Whether any process has received a signal by now (one blocking agreement: for the end of a run, not for
        every step)."""
        if not self._distributed:
            return self.received is not None
        self.agreed()
        return self.agreed()


class StopAtOnce:
    """While installed (a context manager), SIGTERM/SIGUSR1 raise `Preempted` at once, with `consequence` (what a
    stop now means: "nothing was lost; run the same command again") in its line. `phase` names where the run is.
    The training loop's StopSignal replaces it while it trains and puts it back after.

    Python runs a signal handler only between bytecodes of the main thread, so a long native call (a Rust
    tokenizer's training, a wait in a collective) would hold the stop back until it returns. A watcher thread,
    woken by the signal itself (signal.set_wakeup_fd), ends the process with the same line and exit code when
    no Python handler has run for the signal within GRACE_S seconds and this one is in charge: before training
    nothing is half-written (datasets and the framework write their caches to temporary names and rename them).
    A signal that training's StopSignal received is that handler's, even if training then fails and gives the
    handlers back within the grace (its error is the one reported); so is one that arrives while the exception
    that ended training is on its way out (a launcher stops the other processes when one dies)."""

    GRACE_S = 2.0

    def __init__(self, phase: str, consequence: str, on_stop: Optional[Callable[[], None]] = None):
        self.phase, self.consequence = phase, consequence
        self.on_stop = on_stop  # called before the watcher ends the process (give back the run's folder)
        self._previous: dict[int, Any] = {}
        self._wakeup: Optional[tuple[int, int, int]] = None  # (read end, write end, previous wakeup fd)

    def __enter__(self) -> "StopAtOnce":
        _HANDLED.training_raised = False
        for sig in STOP_SIGNALS:
            try:
                self._previous[sig] = signal.signal(sig, self._stop)
            except ValueError:  # not the main thread: leave signals alone
                pass
        if self._previous:
            read_end, write_end = os.pipe()
            os.set_blocking(write_end, False)
            try:
                self._wakeup = (read_end, write_end, signal.set_wakeup_fd(write_end, warn_on_full_buffer=False))
            except ValueError:
                os.close(read_end), os.close(write_end)
            else:
                threading.Thread(target=self._watch, args=(read_end, _HANDLED.count), daemon=True,
                                 name="stop-watcher").start()
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        if self._wakeup is not None:
            read_end, write_end, previous = self._wakeup
            signal.set_wakeup_fd(previous)
            os.close(write_end)  # the watcher reads end-of-file and ends
            self._wakeup = None
        self._previous.clear()

    def _message(self, signum: int) -> str:
        return f"{signal.Signals(signum).name} received while {self.phase}: stopped; {self.consequence}"

    def _stop(self, signum: int, frame: Any) -> None:
        _HANDLED.count += 1
        if _HANDLED.training_raised:  # the process is already ending with training's own error or stop: that stands
            return
        raise Preempted(self._message(signum))

    def _watch(self, read_end: int, handled_before: int) -> None:
        arrived = 0
        try:
            while True:
                data = os.read(read_end, 64)
                if not data:
                    return
                for signum in data:
                    if signum not in STOP_SIGNALS:
                        continue
                    arrived += 1
                    time.sleep(self.GRACE_S)
                    if signal.getsignal(signum) != self._stop:  # training's StopSignal is in charge, or we are done
                        continue
                    # A Python handler ran for every signal so far: this one's, or training's StopSignal's (which
                    # may have given the handlers back since, e.g. when training ended by an error that is still
                    # being reported): the main thread is not stuck, and what it does with the signal stands.
                    if _HANDLED.count - handled_before >= arrived:
                        continue
                    if os.environ.get("RANK", "0") == "0":
                        print(f"stopped: {self._message(signum)}", file=sys.stderr, flush=True)
                    if self.on_stop is not None:
                        self.on_stop()
                    os._exit(EXIT_PREEMPTED)
        finally:
            os.close(read_end)
