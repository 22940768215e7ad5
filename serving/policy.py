"""The version policy: which versions of each model should serve (TF Serving's ServableVersionPolicy: latest N,
all, specific), version labels, and the ModelServerConfig they come from (--model_config_file, or reloaded over
gRPC), validated before anything changes."""
import os
import re

import grpc
from tensorflow_serving.config import model_server_config_pb2

from serving.config_protos import read_text_proto
from serving.errors import ServingError
from serving.registry import RolloutRecord

# A model name becomes a URL segment, a metric label and a request-log folder: nothing that can escape them.
MODEL_NAME = re.compile(r"[A-Za-z0-9_.-]+")


def single_model_config(name: str, base_path: str, policy: str, latest_versions: int, versions: list[int],
                        labels: dict[str, int]) -> model_server_config_pb2.ModelServerConfig:
    """The ModelServerConfig equivalent of the project's serving settings."""
    config = model_server_config_pb2.ModelServerConfig()
    model = config.model_config_list.config.add(name=name, base_path=base_path, model_platform="tensorflow")
    if policy == "latest":
        model.model_version_policy.latest.num_versions = latest_versions
    elif policy == "all":
        model.model_version_policy.all.SetInParent()
    else:
        model.model_version_policy.specific.versions.extend(versions)
    for label, version in labels.items():
        model.version_labels[label] = version
    return config


def read_model_config_file(path: str) -> model_server_config_pb2.ModelServerConfig:
    return read_text_proto(path, model_server_config_pb2.ModelServerConfig)


def _within(path: str, roots: list[str]) -> bool:
    real = os.path.realpath(path)
    return any(real == root or real.startswith(root.rstrip(os.sep) + os.sep) for root in roots)


def validate(config: model_server_config_pb2.ModelServerConfig, allowed_roots: list[str] | None = None) -> dict:
    """{name: ModelConfig}, or INVALID_ARGUMENT naming the problem. With allowed_roots, every base path must be
    under one of them (a reload request must not point the server at arbitrary files)."""
    if config.WhichOneof("config") != "model_config_list":
        raise ServingError.invalid("only model_config_list is supported")
    roots = [os.path.realpath(r) for r in allowed_roots] if allowed_roots is not None else None
    models = {}
    for model in config.model_config_list.config:
        if not model.name or not model.base_path:
            raise ServingError.invalid("every model config needs a name and a base_path")
        if not MODEL_NAME.fullmatch(model.name) or model.name in (".", ".."):
            raise ServingError.invalid(f"model name {model.name!r}: only letters, digits, '_', '.' and '-' are "
                                       "allowed")
        if model.name in models:
            raise ServingError.invalid(f"model '{model.name}' is configured twice")
        if model.model_platform not in ("", "tensorflow"):
            raise ServingError.invalid(f"model '{model.name}': platform '{model.model_platform}' is not supported")
        if "://" in model.base_path:
            raise ServingError.invalid(f"model '{model.name}': base_path {model.base_path}: only local paths")
        if roots is not None and not _within(model.base_path, roots):
            raise ServingError.invalid(f"model '{model.name}': base_path {model.base_path} is outside the allowed "
                                       f"model roots ({', '.join(roots)}); start the server with "
                                       "--allow_any_model_base_path to allow it")
        models[model.name] = model
    return models


def aspired_versions(policy, versions) -> set[int]:
    """The versions the policy wants served, out of those on disk."""
    choice = policy.WhichOneof("policy_choice")
    if choice == "all":
        return set(versions)
    if choice == "specific":
        return set(versions) & set(policy.specific.versions)
    return set(sorted(versions)[-(policy.latest.num_versions or 1):])


def check_labels(model, servable_versions: set[int]) -> None:
    """TF Serving refuses a label on a version that is not (about to be) available."""
    for label, version in model.version_labels.items():
        if version not in servable_versions:
            raise ServingError(grpc.StatusCode.FAILED_PRECONDITION,
                               f"Request to assign label '{label}' to version {version} of model '{model.name}', "
                               "which is not currently available for inference")


def label_version(labels, label: str) -> int:
    if label not in labels:
        raise ServingError.not_found(f"Unrecognized servable version label: {label}")
    return labels[label]


def route(record: RolloutRecord, loaded, count: int) -> int | None:
    """The version that answers the `count`-th request naming neither a version nor a label during a canary
    rollout: of every 100 such requests exactly canary_percent go to the canary (n * p mod 100 < p holds for p of
    every 100 consecutive n), the rest to stable. An arm that is not loaded gives its share to the other; None
    when neither is loaded (the caller falls back to TF Serving's latest)."""
    canary, stable = record.canary, record.stable
    if canary in loaded and (count * record.canary_percent) % 100 < record.canary_percent:
        return canary
    if stable in loaded:
        return stable
    return canary if canary in loaded else None
