"""The rollout record beside a model's versions (<model_base_path>/rollout.json): which version is `stable`, which is
the `canary` and its share of traffic, the old stable kept for a grace period, and the versions a rollout rejected.

The canary controller (serving/rollout.py) is its only writer; the local server reads it every poll to route
requests (serving/policy.py), and the pipeline reads `rejected` so that a rolled-back version is never the
Evaluator's baseline (pipeline/baseline.py). Plain JSON with no TensorFlow import, so every one of them can read
it. TF Serving and the file-system source ignore it: it is not an integer directory.
"""
import json
import os
from dataclasses import asdict, dataclass, field

from pipeline.files import write_atomic

RECORD = "rollout.json"
AUDIT_LOG = "rollout-audit.jsonl"
AB_STATE = "rollout-ab.json"      # rollout.strategy ab: the test's period and per-arm figures (serving/rollout.py)


@dataclass(frozen=True)
class RolloutRecord:
    stable: int | None = None
    canary: int | None = None
    canary_percent: int = 0          # of the requests that name neither a version nor a label
    step: int = 0                    # index into rollout.steps of the canary's current step
    failures: int = 0                # consecutive failed analyses of the canary
    retiring: int | None = None      # the previous stable, kept loaded until retire_at (Unix time)
    retire_at: float = 0.0
    rejected: dict[str, dict] = field(default_factory=dict)  # version -> {time, reason}

    def served(self) -> set[int]:
        """The versions the server must keep loaded."""
        return {v for v in (self.stable, self.canary, self.retiring) if v is not None}

    def labels(self) -> dict[str, int]:
        labels = {"stable": self.stable} if self.stable is not None else {}
        if self.canary is not None:
            labels["canary"] = self.canary
        return labels

    def is_rejected(self, version: int) -> bool:
        return str(version) in self.rejected


def record_path(base_path: str) -> str:
    return os.path.join(base_path, RECORD)


def read_record(base_path: str) -> RolloutRecord | None:
    """The record, None when there is none; ValueError when it is not one (the reader keeps what it had)."""
    try:
        with open(record_path(base_path)) as f:
            data = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{record_path(base_path)}: {e}") from None
    try:
        record = RolloutRecord(**data)
    except TypeError as e:
        raise ValueError(f"{record_path(base_path)}: {e}") from None
    for key in ("stable", "canary", "retiring"):
        value = getattr(record, key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
            raise ValueError(f"{record_path(base_path)}: {key} must be a version number, got {value!r}")
    if not isinstance(record.canary_percent, int) or not 0 <= record.canary_percent <= 100:
        raise ValueError(f"{record_path(base_path)}: canary_percent must be within [0, 100], got "
                         f"{record.canary_percent!r}")
    return record


def write_record(base_path: str, record: RolloutRecord) -> None:
    write_atomic(record_path(base_path), json.dumps(asdict(record), indent=2, sort_keys=True) + "\n")


def rejected_versions(base_path: str) -> set[int]:
    record = read_record(base_path)
    return {int(v) for v in record.rejected} if record else set()
