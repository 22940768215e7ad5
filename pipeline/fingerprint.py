"""Content digests: what decides that code, data or a model is unchanged (the run fingerprint, the module
fingerprint in custom_config, the pusher's check for a version already served)."""
import hashlib
import os
from collections.abc import Iterable
from pathlib import Path


def files_digest(paths: Iterable[Path], root: Path = None) -> str:
    """SHA-256 over each file's name (relative to `root`) and bytes, in sorted order."""
    digest = hashlib.sha256()
    for path in sorted(Path(p) for p in paths):
        name = str(path.relative_to(root)) if root else path.name
        digest.update(name.encode() + b"\0")
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        digest.update(b"\0")
    return digest.hexdigest()


def tree_digest(path: str | os.PathLike) -> str:
    """files_digest of every file under the directory `path`, each named by its path relative to it."""
    root = Path(path)
    files = [Path(directory) / name for directory, _, names in os.walk(root) for name in names]
    return files_digest(files, root=root)
