"""The version folders of a model's base path, as the pusher writes them: durable, atomic, never colliding.

A version is copied into a hidden temporary folder beside the versions, every file and folder of the copy is
fsynced, and it is renamed to its number (then the base folder is fsynced), so even after a power loss a visible
version is complete. Numbers are picked under an flock on the base folder, and a rename never replaces a version
another push took. No TensorFlow import: retention (`make prune`) and the kill tests use this too.
"""
import errno
import fcntl
import os
import secrets
import shutil
import time

from absl import logging

from pipeline.fingerprint import tree_digest
from serving.registry import rejected_versions
from serving.source import list_versions

# TF Serving only loads directories whose names are integers; these prefixes are never one. A push copies into
# .tmp-<time>.<random>-<pid>; retention (pipeline/retention.py) renames a version to .prune-<version>-<pid> to delete it.
TMP_PREFIX = ".tmp-"
PRUNE_PREFIX = ".prune-"


def served_versions(base_directory: str) -> list[int]:
    """Every version directory (integer name) under the base directory, oldest first."""
    if not os.path.isdir(base_directory):
        return []
    return sorted(int(n) for n in os.listdir(base_directory) if n.isdigit())


def identical_versions(base_directory: str, model_path: str) -> list[int]:
    """The versions whose files are byte-identical to the model's, oldest first."""
    wanted = tree_digest(model_path)
    return [v for v in served_versions(base_directory)
            if tree_digest(os.path.join(base_directory, str(v))) == wanted]


def find_identical_version(base_directory: str, model_path: str) -> int | None:
    identical = identical_versions(base_directory, model_path)
    return identical[-1] if identical else None


def serving_version(base_directory: str) -> int | None:
    """The version that serves (or will, once a canary rollout gets to it): the newest complete version a rollout
    did not reject. TF Serving's `latest` policy serves the newest version; the canary controller
    (serving/rollout.py) rolls out every newer version that is not rejected and ends with the newest as stable."""
    rejected = rejected_versions(base_directory)
    candidates = [v for v in list_versions(base_directory)[0] if v not in rejected]
    return max(candidates, default=None)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def leftover_owner(name: str) -> int | None:
    """The pid in a push's or a prune's hidden directory name (.tmp-<version>-<pid>, .prune-<version>-<pid>)."""
    for prefix in (TMP_PREFIX, PRUNE_PREFIX):
        if name.startswith(prefix):
            _, _, pid = name[len(prefix):].rpartition("-")
            return int(pid) if pid.isascii() and pid.isdigit() else None
    return None


def clean_leftovers(base_directory: str) -> list[str]:
    """Removes what dead pushes and prunes left (a kill mid-copy): hidden directories whose pid is not alive.
    A live process's directory is kept (a concurrent push still copying). Returns the names removed."""
    removed = []
    if not os.path.isdir(base_directory):
        return removed
    for name in sorted(os.listdir(base_directory)):
        pid = leftover_owner(name)
        if pid is None or pid == os.getpid() or _alive(pid):
            continue
        shutil.rmtree(os.path.join(base_directory, name), ignore_errors=True)
        if not os.path.exists(os.path.join(base_directory, name)):
            removed.append(name)
            logging.info("Removed %s, left by process %d, which is gone.", name, pid)
    return removed


def fsync_path(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if os.path.isdir(path) else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: str) -> None:
    """fsyncs every file, then every directory (deepest first, so each entry is durable before its parent)."""
    for directory, _, names in os.walk(root, topdown=False):
        for name in names:
            fsync_path(os.path.join(directory, name))
        fsync_path(directory)


class _BaseLock:
    """An exclusive flock on the base directory itself (no lock file among the versions): two pushes on this
    machine pick their version numbers one after the other."""

    def __init__(self, base_directory: str):
        self.path = base_directory
        self.fd = os.open(base_directory, os.O_RDONLY | os.O_DIRECTORY)

    def __enter__(self):
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX)
        except OSError as e:  # a file system without flock (some network volumes): the rename check still holds
            logging.warning("No flock on %s (%s); relying on rename never replacing a version.", self.path, e)
        return self

    def __exit__(self, *exc):
        os.close(self.fd)  # releases the flock


def _make_base(base_directory: str) -> None:
    if os.path.isdir(base_directory):
        return
    os.makedirs(base_directory, exist_ok=True)
    fsync_path(os.path.dirname(os.path.abspath(base_directory)))


def push_atomically(model_path: str, base_directory: str) -> int:
    """Copies the model to <base>/<version>/ via a temporary directory, fsyncs it and renames it into place;
    returns the version. Leftovers of dead pushes are removed first."""
    _make_base(base_directory)
    clean_leftovers(base_directory)
    # Unique per push, even for two threads of one process; the pid last, for clean_leftovers.
    tmp = os.path.join(base_directory, f"{TMP_PREFIX}{int(time.time())}.{secrets.token_hex(4)}-{os.getpid()}")
    try:
        shutil.copytree(model_path, tmp)
        fsync_tree(tmp)
        with _BaseLock(base_directory):
            while True:
                # Unix time like TFX, but always above every version already there.
                version = max([int(time.time())] + [v + 1 for v in served_versions(base_directory)])
                try:
                    # rename(2) onto a non-empty directory fails, so a version another push (on another machine,
                    # where the flock does not reach) took in between is never overwritten: take the next number.
                    if os.path.exists(os.path.join(base_directory, str(version))):
                        continue
                    os.rename(tmp, os.path.join(base_directory, str(version)))
                    break
                except OSError as e:
                    if e.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                        raise
            fsync_path(base_directory)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return version

