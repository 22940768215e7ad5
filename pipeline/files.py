"""Writing a file so that a reader never sees it half-written (reports, run records, deployment files)."""
import errno
import os
import secrets
import tempfile


def write_atomic(path: str | os.PathLike, text: str) -> str:
    """Writes `text` to a temporary file beside `path`, then renames it into place; returns the path."""
    path = os.fspath(path)
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return path


def link_atomic(source: str | os.PathLike, path: str | os.PathLike) -> str:
    """Makes `path` another name of the file `source` (a hard link renamed into place: its bytes are not written
    twice, and a full disk cannot fail it half-way); a write_atomic copy where the file system has no hard links."""
    path = os.fspath(path)
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{secrets.token_hex(4)}.tmp")
    try:
        os.link(source, tmp)
    except OSError as e:
        if e.errno not in (errno.EPERM, errno.EXDEV, errno.EOPNOTSUPP, errno.EMLINK):
            raise
        with open(source) as f:
            return write_atomic(path, f.read())
    try:
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return path
