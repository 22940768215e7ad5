"""Writing a file so that a reader never sees it half-written (reports, run records, deployment files)."""
import os
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
