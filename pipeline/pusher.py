"""Pusher executor: TFX's Pusher with an atomic, durable, deduplicated filesystem push.

TFX copies the model file by file into <base>/<version>/, so TF Serving's file
watcher can load a partial version (tensorflow/serving#1086). Here the model is
copied into a hidden temporary directory beside it, every file and directory of the
copy is fsynced, and it is renamed into place (then the base directory is fsynced),
so even after a power loss a visible version is complete. A model byte-identical to
the version that serves is not pushed again; identical to an older version (data
A -> B -> A), it is pushed as a new version so that it serves.
"""
import os
from typing import Any

from absl import logging
from tfx import types
from tfx.components.pusher import executor as tfx_pusher
from tfx.proto import pusher_pb2
from tfx.types import artifact_utils, standard_component_specs
from tfx.utils import io_utils, proto_utils

from pipeline.versions import clean_leftovers, identical_versions, push_atomically, serving_version
from serving.registry import rejected_versions

# Custom property on the pushed_model artifact: 1 when the identical version was already the one serving.
ALREADY_SERVED = "already_served"


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

        clean_leftovers(base)  # what killed pushes left, also when nothing is copied this time
        identical = identical_versions(base, model_path)
        rejected = set(identical) & rejected_versions(base)
        if rejected:
            # A canary rollout rolled this very model back (serving/rollout.py): pushing it again would only
            # restart the rollout that rejected it.
            logging.info("Model identical to version %d, which a canary rollout rejected; not pushing it.",
                         max(rejected))
            self._MarkNotPushed(model_push)
            return
        # The artifact's own copy first, as TFX's Pusher does: if it fails (a full disk), nothing new serves
        # while the execution fails with no PushedModel for the baseline and retention to follow.
        io_utils.copy_dir(model_path, model_push.uri)
        serving = serving_version(base)
        if serving in identical:
            logging.info("Model already served as version %d in %s; not pushing a duplicate.", serving, base)
            version = serving
            model_push.set_int_custom_property(ALREADY_SERVED, 1)
        else:
            # New, or identical only to an older version that no longer serves (a rollback to earlier data):
            # a new version, so that the blessed model is the one serving.
            version = push_atomically(model_path, base)
            logging.info("Model pushed atomically to %s%s.", os.path.join(base, str(version)),
                         f" (identical to older version {identical[-1]})" if identical else "")
        self._MarkPushed(model_push, pushed_destination=os.path.join(base, str(version)),
                         pushed_version=str(version))
