"""Content fingerprints: what decides that code or data is unchanged."""
import hashlib
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
