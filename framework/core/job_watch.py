"""Multi-node jobs: a process ends when the launcher of another node has ended.

On one node, when a process fails (a `--ddp_timeout` in a collective, an error), the
node's launcher (torch's elastic agent, under `accelerate launch` and `torchrun`)
stops the node's other processes, a stalled one included. Another node's launcher
does not hear of it: its processes go on until they reach a collective and time out
there, and a process stalled outside any collective (a hung data loader, a file
system that does not answer) waits for as long as its stall lasts.

Every worker of such a job reaches the launchers' rendezvous store (MASTER_ADDR and
MASTER_PORT), which the first node's launcher hosts and keeps until every launcher
has finished; a failed launcher exits without waiting for the others. So a daemon
thread here asks the store whether it is still there, every POLL_S seconds, and when
it stops answering ends this process with one line and exit code 5, as a timed-out
collective does. On a successful run the store outlives every worker, so the check
cannot fire then.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
from typing import Optional

from framework.core.errors import EXIT_PEER_LOST

POLL_S = 5.0
ATTEMPTS = 3  # failed contacts in a row, POLL_S / 2 apart, before the store counts as gone


def other_nodes_watched() -> bool:
    """Whether this process is a worker of a multi-node job whose store the first node's launcher hosts."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    return (world > local and os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
            and "MASTER_ADDR" in os.environ and "MASTER_PORT" in os.environ)


def watch_other_nodes() -> Optional[threading.Thread]:
    """Start the store watch in a multi-node job launched by torch's elastic agent; None elsewhere."""
    if not other_nodes_watched():
        return None
    thread = threading.Thread(target=_watch, args=(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])),
                              daemon=True, name="job-store-watch")
    thread.start()
    return thread


def store_answers(host: str, port: int) -> bool:
    """Whether the rendezvous store's port at host:port accepts a connection within POLL_S seconds.

    A plain TCP connection, closed at once: a store client's failed requests retry for their whole
    timeout and print C++ stack traces; a port with no server behind it refuses at once."""
    try:
        with socket.create_connection((host, port), timeout=POLL_S):
            return True
    except OSError:  # refused (the launcher is gone), unreachable, or timed out (its machine is gone)
        return False


def _watch(host: str, port: int) -> None:
    failures = 0
    while True:
        time.sleep(POLL_S if failures == 0 else POLL_S / 2)
        failures = 0 if store_answers(host, port) else failures + 1
        if failures >= ATTEMPTS:
            sys.stderr.write(
                f"error: the launcher of another node has ended (the job's rendezvous store at {host}:{port} no "
                f"longer answers): a process there failed or stalled past --ddp_timeout; see that node's output. "
                f"This process ends too (exit code {EXIT_PEER_LOST})\n")
            sys.stderr.flush()
            os._exit(EXIT_PEER_LOST)
