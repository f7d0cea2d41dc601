"""Stop signals: a real SIGTERM/SIGUSR1 to a running launch ends it with one complete checkpoint, and the
identical command with --resume_from_checkpoint auto finishes bitwise equal to an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from framework.core.errors import EXIT_PREEMPTED
from framework.train.preemption import StopSignal

from helpers import (
    CONFIGS,
    DIGITS,
    REPO,
    debug_launch,
    launch,
    read_json,
    run_digits_in_group,
    run_digits_in_process,
    weights,
)

ACCELERATE = str(Path(sys.executable).with_name("accelerate"))
# Dropout on (the digits default 0.1) so every RNG must come back; no periodic checkpoints.
RUN_ARGS = ["--mixed_precision", "no", "--num_train_epochs", "3", "--seed", "3", "--logging_steps", "5",
            "--resume_from_checkpoint", "auto"]


def _command(launcher: str, out: Path) -> list[str]:
    if launcher == "python":
        return [sys.executable, str(DIGITS), "--output_dir", str(out), *RUN_ARGS]
    config = {"accelerate-1proc": "cpu.yaml", "accelerate-2proc": "cpu_2proc.yaml"}[launcher]
    return [ACCELERATE, "launch", "--config_file", str(CONFIGS / config), str(DIGITS), "--output_dir", str(out),
            *RUN_ARGS]


def _logged_step(out: Path) -> int:
    try:
        lines = (out / "metrics.jsonl").read_text().splitlines()
    except FileNotFoundError:
        return 0
    return max((json.loads(line).get("step", 0) for line in lines if line.strip()), default=0)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def _signal_mid_run(command: list[str], out: Path, sig: signal.Signals, after_step: int = 20):
    """Start `command` in its own process group, send `sig` to the group once training passed `after_step`;
    return (launcher exit code, stderr, seconds from the signal until every process of the group is gone)."""
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    err_file = out.parent / f"{out.name}.stderr"
    with open(err_file, "w") as err:
        proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=err, stdin=subprocess.DEVNULL,
                                env=env, start_new_session=True)
        deadline = time.monotonic() + 120
        while _logged_step(out) < after_step and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        assert proc.poll() is None, "the run ended before the signal"
        os.killpg(proc.pid, sig)
        sent = time.monotonic()
        code = proc.wait(timeout=90)
        while _group_alive(proc.pid) and time.monotonic() - sent < 90:  # 1 process: the launcher exits first
            time.sleep(0.05)
        gone_after = time.monotonic() - sent
    return code, err_file.read_text(), gone_after


def _bitwise_equal(a: Path, b: Path) -> bool:
    wa, wb = weights(a), weights(b)
    return wa.keys() == wb.keys() and all(wa[k].equal(wb[k]) for k in wa)



@pytest.fixture(scope="module")
def uninterrupted_runs() -> dict[int, Path]:
    return {}


@pytest.fixture
def uninterrupted(uninterrupted_runs, tmp_path_factory, capfd):
    """`uninterrupted(processes)`: the run of RUN_ARGS on 1 or 2 processes without a signal, made once per module
    (in this process, or a forked gloo group: the launchers under test are the signalled and resumed runs')."""

    def get(processes: int) -> Path:
        if processes not in uninterrupted_runs:
            out = tmp_path_factory.mktemp(f"uninterrupted{processes}")
            capfd.readouterr()
            if processes == 1:
                assert run_digits_in_process(out, *RUN_ARGS) == 0
            else:
                run_digits_in_group(out, *RUN_ARGS)
            assert "resumed from" not in capfd.readouterr().out  # `auto` with no checkpoint: trains from scratch
            uninterrupted_runs[processes] = out
        return uninterrupted_runs[processes]

    return get


@pytest.mark.slow
@pytest.mark.parametrize("launcher,sig", [("accelerate-1proc", signal.SIGTERM), ("accelerate-2proc", signal.SIGTERM),
                                          ("python", signal.SIGUSR1)])
def test_stop_signal_checkpoints_and_the_same_command_resumes_bitwise(tmp_path, launcher, sig, uninterrupted):
    reference, out = uninterrupted(2 if launcher == "accelerate-2proc" else 1), tmp_path / "run"

    code, stderr, gone_after = _signal_mid_run(_command(launcher, out), out, sig)
    assert gone_after < 60
    stopped = [line for line in stderr.splitlines() if line.startswith("stopped:")]
    assert len(stopped) == 1 and f"{sig.name} received: stopped after optimizer step" in stopped[0], stderr[-3000:]
    if launcher == "python":
        # stderr holds the progress bar, then the one line; no traceback
        assert code == EXIT_PREEMPTED and stderr.strip().splitlines()[-1] == stopped[0]
        assert "Traceback" not in stderr
    checkpoints = sorted(p.name for p in (out / "checkpoints").iterdir())
    step = read_json(out / "checkpoints" / checkpoints[0] / "state.json")["state"]["step"]
    assert checkpoints == [f"step_{step}"] and step >= 20
    assert {"model.safetensors", "trainer.pt", "rng_0.pt", "state.json"} <= {
        p.name for p in (out / "checkpoints" / f"step_{step}").iterdir()}
    assert not (out / "summary.json").exists()
    assert read_json(out / "labels.json") == [str(i) for i in range(10)]  # the checkpoint is usable (--model_path)
    if launcher == "accelerate-1proc":
        # Under test here: the 1-process launcher passes the signal on and the run stops as above. Its resume is
        # one process resuming a checkpoint, as in the python case (and test_resume's killed 1-process launches).
        return

    resumed = launch(_command(launcher, out))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from {out / 'checkpoints' / f'step_{step}'} at optimizer step {step}" in resumed.stdout
    assert read_json(out / "summary.json")["optimizer_steps"] == read_json(reference / "summary.json")[
        "optimizer_steps"]
    assert _bitwise_equal(reference, out)


def _agree_when_only_rank_1_is_signalled(results):
    """In a real 2-process group only rank 1 gets the signal, during step 3; both must stop after the same step."""
    import gc
    import weakref

    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    threads = lambda: len(os.listdir("/proc/self/task"))  # noqa: E731  (native threads too)
    before = threads()
    with StopSignal(accelerator.num_processes) as stop:
        group = weakref.ref(stop._group)
        for step in range(1, 20):
            if step == 3 and accelerator.process_index == 1:
                os.kill(os.getpid(), signal.SIGTERM)
            if stop.agreed():
                break
        stopped_at = step
    gc.collect()
    results.put((accelerator.process_index, stopped_at, stop.received, group() is None, threads() - before))


def test_processes_agree_on_the_stop_step_and_leave_no_collective_thread_behind():
    import multiprocessing

    results = multiprocessing.get_context("fork").SimpleQueue()
    debug_launch(_agree_when_only_rank_1_is_signalled, results)
    got = sorted(results.get() for _ in range(2))
    # Rank 1 raised its flag at step 3; the all-reduce started then is read one step later. The agreement's own
    # group is gone afterwards, with its worker threads (one left at the interpreter's exit with the last
    # collective to free aborted a finished run: framework.train.preemption).
    assert got == [(0, 4, None, True, 0), (1, 4, "SIGTERM", True, 0)]


def test_one_process_stops_after_the_current_step_and_restores_the_handlers():
    before = signal.getsignal(signal.SIGUSR1)
    with StopSignal(1) as stop:
        assert not stop.agreed()
        os.kill(os.getpid(), signal.SIGUSR1)  # would end the process under the default handler
        assert stop.received == "SIGUSR1" and stop.agreed()
    assert signal.getsignal(signal.SIGUSR1) is before
