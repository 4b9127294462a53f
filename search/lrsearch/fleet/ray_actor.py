"""One `lrsearch worker` process kept running on a Ray node: the body of the Ray actor of `start --ray`.

The actor does what the local supervisor does for one worker: it starts the same command line
(`worker_command`, `WorkerSpec.env`), starts it again when it dies before the budget is spent, and stops it
with SIGTERM (the worker fails its running trial and queues it again). Ray restarts the actor itself when its
process or node dies; the worker process then gets SIGTERM from the kernel (it dies with its parent), and a
trial it could not queue again is rerun by another worker once its heartbeat is stale.

Plain Python, no Ray import: `ray_engine` wraps the class with `ray.remote` (a threaded actor, so that
`stop` runs while `run` waits).
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from lrsearch.fleet.supervisor import WorkerSpec, worker_command

USAGE_ERROR = 2  # `lrsearch worker` refused its input: starting it again cannot help
QUICK_DEATH_SECONDS = 60.0  # a worker that dies sooner than this after its start counts towards giving up
QUICK_DEATHS = 5  # ... and after this many such deaths in a row its actor gives up
_PR_SET_PDEATHSIG = 1


class WorkerProcess:
    """Runs `lrsearch worker` for one planned worker until the study's budget is spent or `stop` is called."""

    def __init__(
        self,
        study_name: str,
        spec: WorkerSpec,
        storage_url: str,
        data_dir: Path | None,
        forwarded_env: dict[str, str],
    ) -> None:
        self.command = worker_command(study_name, spec, data_dir)  # this node's Python, not the driver's
        self.env = spec.env(dict(os.environ, **forwarded_env), storage_url)
        self.spec = spec
        self._lock = threading.Lock()
        self._process: subprocess.Popen[bytes] | None = None
        self._stopping = False

    def run(self) -> int:
        """The worker's exit code: 0 once the budget is spent, else the code of its last run."""
        quick_deaths = 0
        while True:
            with self._lock:  # never start a process after `stop`
                if self._stopping:
                    return 130  # as a worker stopped by a signal
                started = time.monotonic()
                self._process = _spawn(self.command, self.env)
            code = self._process.wait()
            with self._lock:
                if self._stopping or code in (0, USAGE_ERROR):
                    return code
            quick_deaths = quick_deaths + 1 if time.monotonic() - started < QUICK_DEATH_SECONDS else 0
            if quick_deaths >= QUICK_DEATHS:
                self._say(f"{describe_exit(code)} {quick_deaths} times in a row soon after its start; giving up")
                return code
            self._say(f"{describe_exit(code)}; starting it again")

    def stop(self) -> None:
        """SIGTERM to the worker: it fails its running trial, queues it again and exits."""
        with self._lock:
            self._stopping = True
            if self._process is not None and self._process.poll() is None:
                self._process.send_signal(signal.SIGTERM)

    def pid(self) -> int | None:
        """The worker process's id (tests kill it)."""
        with self._lock:
            return None if self._process is None else self._process.pid

    def _say(self, text: str) -> None:
        pid = "" if self._process is None else f" (pid {self._process.pid})"
        # The actor's stderr goes to the driver (Ray streams it): the line shows in the output of `start`.
        print(f"{self.spec.describe()}{pid} {text}", file=sys.stderr, flush=True)


def describe_exit(code: int) -> str:
    if code < 0:
        return f"was killed by {signal.Signals(-code).name}"
    return f"exited with code {code}"


def _spawn(command: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        command,
        env=env,
        start_new_session=True,  # a signal to the actor's process group does not reach the worker twice
        preexec_fn=_die_with_parent if sys.platform == "linux" else None,
    )


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the actor's process dies (killed, or its node lost), so that no
    worker outlives its actor and runs on unsupervised. (The kernel sends it when the thread that started the
    worker ends: `run`'s thread, which waits for the worker.)"""
    parent = os.getppid()
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # the actor died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


__all__ = ["WorkerProcess", "describe_exit", "QUICK_DEATHS", "QUICK_DEATH_SECONDS"]
