"""What every runner does around its run(): load the configuration, show progress, summarise from ML Metadata.

A runner picks its orchestrator and calls run() once; the exit status is 0 only
when the pipeline completed.
"""
import logging
import os
import sys
import time
import traceback
from typing import Optional

from pipeline.config import ConfigError, load_config
from pipeline.gate import DataGateError

log = logging.getLogger("tfx_e2e")


class _Progress(logging.Handler):
    """Turns LocalDagRunner's 'Component X is running/finished' log lines into progress lines."""

    def __init__(self, node_ids):
        super().__init__(logging.INFO)
        self.node_ids = list(node_ids)
        self.started = {}

    def emit(self, record):
        message = record.getMessage()
        if record.levelno >= logging.ERROR:
            print(f"  ! {message.splitlines()[0]}", file=sys.stderr, flush=True)
            return
        for state in ("running", "finished"):
            suffix = f" is {state}."
            if message.startswith("Component ") and message.endswith(suffix):
                node = message[len("Component "):-len(suffix)]
                position = f"[{self.node_ids.index(node) + 1}/{len(self.node_ids)}]" if node in self.node_ids else ""
                if state == "running":
                    self.started[node] = time.monotonic()
                    print(f"▶ {position} {node} ...", flush=True)
                else:
                    elapsed = time.monotonic() - self.started.get(node, time.monotonic())
                    print(f"✓ {position} {node} ({elapsed:.1f} s)", flush=True)


def _root_cause(error: BaseException) -> BaseException:
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, DataGateError):
            return error
        error = error.__cause__ or error.__context__
    return None


def run(runner, default_profile: str, profile: Optional[str] = None) -> None:
    """Runs the pipeline with `runner` under the chosen profile and exits with its status."""
    from pipeline.pipeline import create_pipeline
    from pipeline.summary import print_summary

    try:
        config = load_config(profile or os.environ.get("TFX_E2E_PROFILE") or default_profile)
    except ConfigError as e:
        print(f"error: configuration: {e}", file=sys.stderr)
        sys.exit(2)

    tfx_pipeline = create_pipeline(config)
    progress = _Progress([c.id for c in tfx_pipeline.components])
    absl_logger = logging.getLogger("absl")
    absl_logger.setLevel(logging.INFO)
    absl_logger.addHandler(progress)
    # TFX logs every step at INFO; the progress handler shows what a person follows.
    absl_logger.propagate = False
    print(f"tfx-e2e: pipeline '{config.pipeline_name}', profile '{config.profile}', data {config.data_root}")
    print(f"         output {config.output_root}")
    started = time.time()
    error = None
    try:
        runner.run(tfx_pipeline)
    except Exception as e:  # the summary below reports which component failed and why
        error = e
    finally:
        absl_logger.removeHandler(progress)
        absl_logger.propagate = True
    ok = print_summary(config, started, error)
    if error is not None and not isinstance(_root_cause(error), DataGateError):
        # The whole chain: Beam and TFX wrap the error that matters.
        print("\n" + "".join(traceback.format_exception(error)), file=sys.stderr)
        print(f"error: {type(error).__name__}: {error}", file=sys.stderr)
    sys.exit(0 if ok else 1)
