"""One run at a time per output root: an flock(2) on <output_root>/runs/<pipeline>.lock.

runners.harness.run() holds the lock for the whole run; a second run on the same output root is refused at once
(exit status 1) with a message naming the holder (pid, since when, which span, why). The kernel drops an flock
when its holder dies, so a killed run never blocks the next one. The holder writes who it is into the lock file.

The watcher (runners.watcher) takes the same lock for each run it starts and hands it to the run it starts as an
inherited file descriptor (TFX_E2E_RUN_LOCK_FD): flock belongs to the open file, so the child holds it too, and
the lock lasts until both are done with it. A watcher also holds <pipeline>.watch.lock for its whole life:
a second watcher on the same output root is refused.
"""
import fcntl
import json
import os
import time

from pipeline.config import ENV_RUN_LOCK_FD as ENV_LOCK_FD  # a descriptor of the run lock the parent locked
from pipeline.config import Config


class LockHeld(RuntimeError):
    """Someone else holds the lock; the message names the holder."""


def run_lock_path(config: Config) -> str:
    return os.path.join(config.output_root, "runs", f"{config.pipeline_name}.lock")


def watch_lock_path(config: Config) -> str:
    return os.path.join(config.output_root, "runs", f"{config.pipeline_name}.watch.lock")


def describe(holder: dict) -> str:
    """`pid 123, started 2026-11-30 00:01:02 UTC, span 3, reason new_span (make watch)`."""
    if not holder:
        return "a process that has not said who it is yet"
    parts = [f"pid {holder.get('pid', '?')}", f"started {holder.get('started', '?')}"]
    if holder.get("span") is not None:
        parts.append(f"span {holder['span']}")
    if holder.get("reason"):
        parts.append(f"reason {holder['reason']}")
    return ", ".join(parts) + (f" ({holder['by']})" if holder.get("by") else "")


class Lock:
    """An exclusive flock on `path`; `holder` (pid, started, span, reason, by) is written into the file."""

    def __init__(self, path: str):
        self.path = path
        self.fd: int | None = None
        self.owned = True  # False: inherited from the parent, which releases it

    def acquire(self, **holder) -> "Lock":
        """Takes the lock at once or raises LockHeld naming the holder."""
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise LockHeld(f"{self.path} is held by {describe(read_holder(self.path))}") from None
        self.fd = fd
        self.write_holder(**holder)
        return self

    def adopt(self, fd: int, **holder) -> bool:
        """Uses `fd`, a descriptor of this lock file the parent locked and passed down; False if it is not one."""
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            if same:
                # The same open file: flock succeeds at once (it already holds the lock) and proves it.
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False
        if not same:
            return False
        self.fd, self.owned = fd, False
        parent = read_holder(self.path).get("by")
        if parent and holder.get("by"):
            holder["by"] = f"{parent}: {holder['by']}"
        self.write_holder(**holder)
        return True

    def write_holder(self, **holder) -> None:
        holder = {"pid": os.getpid(), "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), **holder}
        data = json.dumps(holder).encode()
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, data, 0)

    def release(self) -> None:
        if self.fd is None:
            return
        if self.owned:
            os.ftruncate(self.fd, 0)
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
        self.fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()


def read_holder(path: str) -> dict:
    try:
        with open(path) as f:
            return json.loads(f.read() or "{}")
    except (OSError, ValueError):
        return {}


def acquire_run_lock(config: Config, env=None, **holder) -> Lock:
    """The run lock for `config`'s output root: the one the parent passed down (TFX_E2E_RUN_LOCK_FD) when it is
    this lock file, else taken here. Raises LockHeld."""
    env = os.environ if env is None else env
    lock = Lock(run_lock_path(config))
    inherited = env.get(ENV_LOCK_FD, "")
    if inherited.isdigit() and os.path.exists(lock.path) and lock.adopt(int(inherited), **holder):
        return lock
    return lock.acquire(**holder)
