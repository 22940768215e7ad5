"""The file-system source: which versions of a model are on disk, as TF Serving's FileSystemStoragePathSource sees
them (tensorflow_serving/sources/storage_path/file_system_storage_path_source.cc).

A version is a directory named by a non-negative integer (ASCII digits, within int64) that holds saved_model.pb and
variables/variables.index. Anything else (the pusher's hidden temporary directory, a version still being copied
without its variables, a name like "²" that Python's isdigit accepts) is not a candidate.
"""
import logging
import os

log = logging.getLogger("serving.source")

SAVED_MODEL_FILES = ("saved_model.pb", "saved_model.pbtxt")
VARIABLES_INDEX = os.path.join("variables", "variables.index")
MAX_VERSION = 2**63 - 1


class SourceError(OSError):
    """The base path could not be listed (EMFILE, a network volume hiccup): what is loaded keeps serving."""


def version_number(name: str) -> int | None:
    if not (name.isascii() and name.isdigit()) or len(name) > 19:
        return None
    number = int(name)
    return number if number <= MAX_VERSION else None


def list_versions(base_path: str) -> tuple[dict[int, str], dict[int, str]]:
    """Complete versions {version: path} and incomplete ones {version: what is missing}.

    A missing base path has no versions (a model not pushed yet); any other listing error raises SourceError."""
    try:
        names = os.listdir(base_path)
    except FileNotFoundError:
        return {}, {}
    except OSError as e:
        raise SourceError(e.errno, f"cannot list {base_path}: {e.strerror}") from None
    complete, incomplete = {}, {}
    for name in names:
        version = version_number(name)
        if version is None:
            continue
        path = os.path.join(base_path, name)
        if not any(os.path.isfile(os.path.join(path, f)) for f in SAVED_MODEL_FILES):
            incomplete[version] = "no saved_model.pb"
        elif not os.path.isfile(os.path.join(path, VARIABLES_INDEX)):
            incomplete[version] = f"no {VARIABLES_INDEX}"
        else:
            complete[version] = path
    return complete, incomplete
