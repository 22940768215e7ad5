"""Pusher executor: TFX's Pusher with an atomic, deduplicated filesystem push.

TFX copies the model file by file into <base>/<version>/, so TF Serving's file
watcher can load a partial version (tensorflow/serving#1086). Here the model is
copied into a hidden temporary directory beside it and renamed into place, and a
model whose files are byte-identical to a version already there is not pushed again.
"""
import os
import shutil
import time
from typing import Any

from absl import logging
from tfx import types
from tfx.components.pusher import executor as tfx_pusher
from tfx.proto import pusher_pb2
from tfx.types import artifact_utils, standard_component_specs
from tfx.utils import io_utils, proto_utils

from pipeline.fingerprint import tree_digest
from serving.registry import rejected_versions

# TF Serving only loads directories whose names are integers; this prefix is never one.
TMP_PREFIX = ".tmp-"
# Custom property on the pushed_model artifact: 1 when an identical version was already there.
ALREADY_SERVED = "already_served"


def served_versions(base_directory: str) -> list[int]:
    if not os.path.isdir(base_directory):
        return []
    return sorted(int(n) for n in os.listdir(base_directory) if n.isdigit())


def find_identical_version(base_directory: str, model_path: str) -> int | None:
    wanted = tree_digest(model_path)
    for version in reversed(served_versions(base_directory)):
        if tree_digest(os.path.join(base_directory, str(version))) == wanted:
            return version
    return None


def push_atomically(model_path: str, base_directory: str) -> int:
    """Copies the model to <base>/<version>/ via a temporary directory and one rename; returns the version."""
    os.makedirs(base_directory, exist_ok=True)
    # Unix time like TFX, but always above every version already there.
    version = max([int(time.time())] + [v + 1 for v in served_versions(base_directory)])
    final = os.path.join(base_directory, str(version))
    tmp = os.path.join(base_directory, f"{TMP_PREFIX}{version}-{os.getpid()}")
    try:
        shutil.copytree(model_path, tmp)
        os.rename(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return version


class AtomicPushExecutor(tfx_pusher.Executor):
    """Same inputs, outputs and custom properties (pushed, pushed_destination, pushed_version) as TFX's."""

    def Do(self, input_dict: dict[str, list[types.Artifact]], output_dict: dict[str, list[types.Artifact]],
           exec_properties: dict[str, Any]) -> None:
        destination = pusher_pb2.PushDestination()
        proto_utils.json_to_proto(exec_properties[standard_component_specs.PUSH_DESTINATION_KEY], destination)
        base = destination.filesystem.base_directory
        if destination.WhichOneof("destination") != "filesystem" or "://" in base:
            # Object stores have no atomic rename: TFX's own push (saved_model.pb copied last).
            super().Do(input_dict, output_dict, exec_properties)
            return
        self._log_startup(input_dict, output_dict, exec_properties)
        model_push = artifact_utils.get_single_instance(output_dict[standard_component_specs.PUSHED_MODEL_KEY])
        if not self.CheckBlessing(input_dict):
            self._MarkNotPushed(model_push)
            return
        model_path = self.GetModelPath(input_dict)

        existing = find_identical_version(base, model_path)
        if existing is not None and existing in rejected_versions(base):
            # A canary rollout rolled this very model back (serving/rollout.py): pushing it again would only
            # restart the rollout that rejected it.
            logging.info("Model identical to version %d, which a canary rollout rejected; not pushing it.", existing)
            self._MarkNotPushed(model_push)
            return
        if existing is not None:
            logging.info("Model already served as version %d in %s; not pushing a duplicate.", existing, base)
            version = existing
            model_push.set_int_custom_property(ALREADY_SERVED, 1)
        else:
            version = push_atomically(model_path, base)
            logging.info("Model pushed atomically to %s.", os.path.join(base, str(version)))
        io_utils.copy_dir(model_path, model_push.uri)
        self._MarkPushed(model_push, pushed_destination=os.path.join(base, str(version)),
                         pushed_version=str(version))
