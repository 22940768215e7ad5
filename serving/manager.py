"""The manager: loads, swaps and unloads versions as the policy aspires them, and reports their status (TF
Serving's AspiredVersionsManager with its availability-preserving policy).

- A new version is loaded and warmed up before it becomes AVAILABLE; only then are versions the policy no
  longer wants unloaded, so the old version answers until the new one can.
- One sync at a time: the watcher's polls, a reload request and the model config file all run under one lock,
  so a version is never loaded twice.
- A base path that cannot be listed (EMFILE, a network volume hiccup) changes nothing: every loaded version
  keeps serving, as in TF Serving.
- A version that fails to load is reported in its status and retried with exponential backoff (TF Serving's
  --max_num_load_retries and --load_retry_interval_micros), and at once when its files change.
- With the canary strategy (rollout.strategy: canary), a model whose base path holds a rollout record
  (serving/registry.py, written by the controller in serving/rollout.py) serves the record's versions instead of
  its version policy's, with its `stable` and `canary` labels over the configured ones, and requests naming
  neither a version nor a label are split between them (policy.route). Without a record, the version policy rules.
"""
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import grpc
from tensorflow_serving.apis import get_model_status_pb2

from serving import policy
from serving.errors import ServingError
from serving.loader import Servable, load_servable, warm_up
from serving.registry import RolloutRecord, read_record
from serving.source import SourceError, list_versions

log = logging.getLogger("serving.manager")

State = get_model_status_pb2.ModelVersionStatus.State


@dataclass
class VersionStatus:
    state: int
    error_code: grpc.StatusCode = grpc.StatusCode.OK
    error_message: str = ""


@dataclass
class _Failure:
    fingerprint: tuple
    attempts: int
    retry_at: float


def _fingerprint(path: str) -> tuple:
    """Changes when a version's files change (a fixed version is tried again at once)."""
    stamps = []
    for root, _, files in os.walk(path):
        for name in files:
            try:
                stat = os.stat(os.path.join(root, name))
            except OSError:
                continue
            stamps.append((os.path.relpath(os.path.join(root, name), path), stat.st_size, stat.st_mtime_ns))
    return tuple(sorted(stamps))


@dataclass(frozen=True)
class Polling:
    """How often the watcher looks (seconds; 0 = once at start), and how failed loads are retried."""
    file_system_seconds: float = 2.0
    config_file_seconds: float = 0.0
    load_retry_seconds: float = 60.0
    max_load_retries: int = 5


class ModelManager:
    """Thread-safe: the watcher thread and reload requests sync, request handlers resolve."""

    def __init__(self, config, polling: Polling | None = None, config_file: str = "",
                 on_change: Callable[[str, int, str], None] = lambda name, version, event: None, canary: bool = False):
        self._lock = threading.Lock()       # the maps below, for readers
        self._sync_lock = threading.Lock()  # one sync at a time
        self._configs = policy.validate(config)
        self._names = tuple(sorted(self._configs))  # known_models(), read lock-free at every request's metrics
        self._servables: dict[str, dict[int, Servable]] = {}
        self._status: dict[str, dict[int, VersionStatus]] = {}
        self._failures: dict[tuple[str, int], _Failure] = {}
        self._canary = canary
        self._records: dict[str, RolloutRecord] = {}   # the rollout record per model (canary strategy)
        self._routed: dict[str, int] = {}               # requests routed per model, for the split
        self._reported: set[tuple] = set()
        self._polling = polling or Polling()
        self._config_file = config_file
        self._config_file_mtime = os.path.getmtime(config_file) if config_file else None
        self.on_change = on_change  # (model, version, event): metrics, the core's batchers
        self._stop = threading.Event()
        self._thread = None

    # --- configuration -------------------------------------------------------------------------------------------
    def reload(self, config, allowed_roots: list[str] | None = None) -> None:
        """Applies a new ModelServerConfig and loads what it asks for (HandleReloadConfigRequest); an invalid one
        changes nothing."""
        with self._sync_lock:
            self._apply(config, allowed_roots)
            self._sync_all()

    def _apply(self, config, allowed_roots: list[str] | None = None) -> None:
        configs = policy.validate(config, allowed_roots)
        for model in configs.values():
            try:
                on_disk = set(list_versions(model.base_path)[0])
            except SourceError:
                on_disk = set()
            loaded = set(self._servables.get(model.name, {}))
            policy.check_labels(model, loaded | policy.aspired_versions(model.model_version_policy, on_disk))
        with self._lock:
            self._configs = configs
            self._names = tuple(sorted(configs))
            removed = [name for name in self._servables if name not in configs]
        for name in removed:
            self._unload_all(name)
        log.info("model config: %s", ", ".join(f"{m.name} ({m.base_path})" for m in configs.values()))

    def _maybe_reload_config_file(self) -> None:
        try:
            mtime = os.path.getmtime(self._config_file)
        except OSError:
            return
        if mtime == self._config_file_mtime:
            return
        self._config_file_mtime = mtime
        try:
            self._apply(policy.read_model_config_file(self._config_file))
        except ServingError as e:
            log.error("model config file %s not applied: %s", self._config_file, e.message)

    # --- watching and loading ------------------------------------------------------------------------------------
    def poll_once(self, config_file: bool = True) -> None:
        with self._sync_lock:
            if config_file and self._config_file:
                self._maybe_reload_config_file()
            self._sync_all()

    def _sync_all(self) -> None:
        with self._lock:
            configs = list(self._configs.values())
        for model in configs:
            self._sync(model)

    def _report_once(self, key: tuple, level: int, message: str, *args) -> None:
        if key not in self._reported:
            self._reported.add(key)
            log.log(level, message, *args)

    def _sync(self, model) -> None:
        try:
            complete, incomplete = list_versions(model.base_path)
        except SourceError as e:
            self._report_once(("listing", model.name, e.errno), logging.WARNING,
                              "%s: %s; the loaded versions keep serving", model.name, e.strerror)
            return
        self._reported = {key for key in self._reported if key[:2] != ("listing", model.name)}
        for version, missing in incomplete.items():
            self._report_once(("incomplete", model.name, version, missing), logging.WARNING,
                              "%s version %d is incomplete (%s): not loading it", model.name, version, missing)
        record = self._read_record(model) if self._canary else None
        if record is not None and record.stable is not None:
            aspired = record.served() & set(complete)
        else:
            aspired = policy.aspired_versions(model.model_version_policy, complete)
        for version in sorted(aspired - set(self._servables.get(model.name, {}))):
            if self._due(model.name, version, complete[version]):
                self._load(model.name, version, complete[version])
        # Unload only what the policy no longer wants, and only once something it wants is serving.
        loaded = set(self._servables.get(model.name, {}))
        if aspired & loaded or not aspired:
            for version in sorted(loaded - aspired):
                self._unload(model.name, version)

    def _read_record(self, model) -> RolloutRecord | None:
        """The model's rollout record; a record that cannot be read changes nothing (the last good one rules)."""
        try:
            record = read_record(model.base_path)
        except ValueError as e:
            self._report_once(("record", model.name, str(e)), logging.ERROR, "%s: rollout record not applied: %s",
                              model.name, e)
            return self._records.get(model.name)
        with self._lock:
            previous = self._records.get(model.name)
            if record is None:
                self._records.pop(model.name, None)
            else:
                self._records[model.name] = record
        if record is not None and (previous is None or previous.labels() != record.labels()
                                   or previous.canary_percent != record.canary_percent):
            log.info("%s rollout: stable %s, canary %s at %d%%", model.name, record.stable, record.canary,
                     record.canary_percent)
        return record

    def _labels(self, name: str) -> dict[str, int]:
        """The configured labels, with the rollout's stable and canary over them (under self._lock)."""
        labels = dict(self._configs[name].version_labels)
        record = self._records.get(name)
        if record is not None:
            labels.update(record.labels())
        return labels

    def _due(self, name: str, version: int, path: str) -> bool:
        failure = self._failures.get((name, version))
        if failure is None:
            return True
        if failure.fingerprint != _fingerprint(path):
            del self._failures[(name, version)]
            return True
        return failure.attempts <= self._polling.max_load_retries and time.monotonic() >= failure.retry_at

    def _load(self, name: str, version: int, path: str) -> None:
        self._set_status(name, version, VersionStatus(State.LOADING))
        try:
            servable = load_servable(name, version, path)
            warmed = warm_up(servable)
        except Exception as e:  # noqa: BLE001 - any load failure keeps the old version serving
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            previous = self._failures.get((name, version))
            attempts = previous.attempts + 1 if previous else 1
            delay = self._polling.load_retry_seconds * 2 ** (attempts - 1)
            self._failures[(name, version)] = _Failure(_fingerprint(path), attempts, time.monotonic() + delay)
            self._set_status(name, version, VersionStatus(State.END, grpc.StatusCode.UNKNOWN, reason))
            retry = (f"retrying in {delay:g} s" if attempts <= self._polling.max_load_retries
                     else "not retrying until its files change")
            log.error("%s version %d failed to load (attempt %d, %s): %s", name, version, attempts, retry, reason)
            self.on_change(name, version, "failed")
            return
        self._failures.pop((name, version), None)
        with self._lock:
            self._servables.setdefault(name, {})[version] = servable
            self._status.setdefault(name, {})[version] = VersionStatus(State.AVAILABLE)
        log.info("%s version %d AVAILABLE (warm-up requests replayed: %d)", name, version, warmed)
        self.on_change(name, version, "available")

    def _unload(self, name: str, version: int) -> None:
        """Forgets the version; its Session closes once in-flight requests release it."""
        with self._lock:
            self._servables.get(name, {}).pop(version, None)
            self._status.setdefault(name, {})[version] = VersionStatus(State.END)
        log.info("%s version %d unloaded", name, version)
        self.on_change(name, version, "unloaded")

    def _unload_all(self, name: str) -> None:
        for version in sorted(self._servables.get(name, {})):
            self._unload(name, version)
        with self._lock:
            self._servables.pop(name, None)
            self._status.pop(name, None)
            self._records.pop(name, None)

    def _set_status(self, name: str, version: int, status: VersionStatus) -> None:
        with self._lock:
            self._status.setdefault(name, {})[version] = status

    def start(self) -> None:
        self.poll_once()
        self._thread = threading.Thread(target=self._watch, name="model-watcher", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        files, config = self._polling.file_system_seconds, self._polling.config_file_seconds
        periods = [p for p in (files, config if self._config_file else 0) if p > 0]
        if not periods:
            return
        next_files = next_config = time.monotonic()
        while not self._stop.wait(min(periods)):
            now = time.monotonic()
            due_files, due_config = files > 0 and now >= next_files, config > 0 and now >= next_config
            if not (due_files or due_config):
                continue
            next_files, next_config = now + files, now + config
            try:
                self.poll_once(config_file=due_config)
            except Exception:  # noqa: BLE001 - the watcher must outlive a bad poll
                log.exception("model directory poll failed")

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=30)

    # --- lookups -------------------------------------------------------------------------------------------------
    def model_names(self) -> list[str]:
        return list(self._names)

    def known_models(self) -> tuple[str, ...]:
        """model_names() without the copy: the metrics test every request's model name against it."""
        return self._names

    def available_versions(self) -> dict[str, list[int]]:
        with self._lock:
            return {name: sorted(self._servables.get(name, {})) for name in self._configs}

    def base_paths(self) -> list[str]:
        with self._lock:
            return [model.base_path for model in self._configs.values()]

    def resolve(self, name: str, version: int | None = None, label: str | None = None) -> Servable:
        with self._lock:
            if name not in self._configs:
                raise ServingError.not_found(f"Servable not found for request: Latest({name})")
            servables = self._servables.get(name, {})
            if label:
                version = policy.label_version(self._labels(name), label)
                if version not in servables:
                    raise ServingError.unavailable(f"Servable not found for request: Specific({name}, {version}) "
                                                   f"(label '{label}': version not loaded yet)")
                return servables[version]
            if version is not None:
                if version not in servables:
                    loading = self._status.get(name, {}).get(version)
                    if loading and loading.state in (State.START, State.LOADING):
                        raise ServingError.unavailable(f"Servable not found for request: Specific({name}, {version}) "
                                                       "(loading)")
                    raise ServingError.not_found(f"Servable not found for request: Specific({name}, {version})")
                return servables[version]
            if not servables:
                raise ServingError.unavailable(f"Servable not found for request: Latest({name}) "
                                               "(no version available yet)")
            record = self._records.get(name)
            if record is not None:
                count = self._routed.get(name, 0)
                self._routed[name] = count + 1
                routed = policy.route(record, servables, count)
                if routed is not None:
                    return servables[routed]
            return servables[max(servables)]

    def status(self, name: str, version: int | None = None, label: str | None = None):
        """GetModelStatusResponse, as TF Serving fills it."""
        with self._lock:
            if name not in self._configs:
                raise ServingError.not_found(f"Could not find any versions of model {name}")
            statuses = dict(self._status.get(name, {}))
            if label:
                version = policy.label_version(self._labels(name), label)
        if version is not None:
            if version not in statuses:
                raise ServingError.not_found(f"Could not find version {version} of model {name}")
            statuses = {version: statuses[version]}
        if not statuses:
            raise ServingError.not_found(f"Could not find any versions of model {name}")
        response = get_model_status_pb2.GetModelStatusResponse()
        for v, status in sorted(statuses.items(), reverse=True):
            entry = response.model_version_status.add(version=v, state=status.state)
            entry.status.error_code = status.error_code.value[0]
            entry.status.error_message = status.error_message
        return response
