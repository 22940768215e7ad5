"""Shared fixtures: the pipeline run end to end on the checked-in slice (tests/data/taxi_small,
3,001 rows of the Chicago taxi sample), with a few training steps so CI stays fast."""
import os
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
SMALL_DATA = TESTS / "data" / "taxi_small"

SMALL_OVERLAY = """
tuner: {enabled: true, max_trials: 1, train_steps: 20, eval_steps: 5}
trainer: {train_steps: 150, eval_steps: 10, batch_size: 64}
evaluator: {auc_lower_bound: 0.6}
"""


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the xdist_group marks (--dist loadgroup)
def pytest_collection_modifyitems(items):
    """The tiers (pytest.ini), one per test: whatever is marked neither e2e nor services is unit (`make test-unit`)."""
    for item in items:
        tiers = [tier for tier in ("e2e", "services") if item.get_closest_marker(tier) is not None]
        if len(tiers) > 1:
            raise pytest.UsageError(f"{item.nodeid}: one tier per test, marked {' and '.join(tiers)}")
        if not tiers:
            item.add_marker(pytest.mark.unit)
        elif group := _worker_group(item):
            item.add_marker(pytest.mark.xdist_group(group))


def _worker_group(item) -> str | None:
    """`make test` runs the pipeline tiers on two pytest-xdist workers (--dist loadgroup): the tests of a session
    pipeline run, or of a module-scoped fixture, go to one worker, so that run happens once."""
    for shared in ("small_pipeline", "span_pipeline"):
        if shared in item.fixturenames:
            return shared
    if any(defs[-1].scope == "module" for defs in item._fixtureinfo.name2fixturedefs.values()):
        return item.module.__name__
    return None


class PipelineRun:
    """Runs runners.harness.run (LocalDagRunner unless told) in this process under a test environment."""

    def __init__(self, root: Path, data_root: Path, overlay: str = SMALL_OVERLAY):
        self.root = root
        overlay_path = root / "overlay.yaml"
        overlay_path.write_text(overlay)
        self.env = {
            "TFX_E2E_CONFIG": str(overlay_path),
            "TFX_E2E_DATA_ROOT": str(data_root),
            "TFX_E2E_OUTPUT_ROOT": str(root / "output"),
            "TFX_E2E_ALWAYS_RUN": "1",
        }

    def config(self):
        from pipeline.config import load_config
        return load_config(env=self.env)

    def __call__(self, make_runner=None, argv=()) -> int:
        from tfx.orchestration.local.local_dag_runner import LocalDagRunner

        from runners.harness import run

        saved = dict(os.environ)
        os.environ.update(self.env)
        try:
            run(make_runner or LocalDagRunner, default_profile="local", argv=argv)
        except SystemExit as done:
            return done.code
        finally:
            os.environ.clear()
            os.environ.update(saved)
        raise AssertionError("run() must exit with a status")


@pytest.fixture(scope="session")
def small_pipeline(tmp_path_factory):
    """A PipelineRun on the small slice; its first run happens here (shared by e2e and model tests)."""
    runner = PipelineRun(tmp_path_factory.mktemp("e2e"), SMALL_DATA)
    runner.first_exit_code = runner()
    return runner


def write_span_root(root: Path) -> Path:
    """A data root of span folders from the small slice: span-1/ (its first 300 rows), span-2/ (all 3,001 rows),
    both complete (_SUCCESS), and span-3/ without the marker (incomplete: never read)."""
    lines = (SMALL_DATA / "data.csv").read_text().splitlines(keepends=True)
    for name, rows, complete in (("span-1", lines[:301], True), ("span-2", lines, True), ("span-3", lines, False)):
        (root / name).mkdir(parents=True)
        (root / name / "data.csv").write_text("".join(rows))
        if complete:
            (root / name / "_SUCCESS").write_text("")
    return root


@pytest.fixture(scope="session")
def span_pipeline(tmp_path_factory):
    """A PipelineRun on a data root of span folders (write_span_root); its first run, on the newest complete
    span (2), happens here. `first_output` is what it printed."""
    import contextlib
    import io

    root = tmp_path_factory.mktemp("spans")
    runner = PipelineRun(root, write_span_root(root / "data"))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        runner.first_exit_code = runner()
    runner.first_output = out.getvalue()
    print(runner.first_output)
    return runner


def write_csv_variant(source: Path, target_dir: Path, edit) -> Path:
    """Copies a CSV with `edit(header, rows)` applied; returns the directory (a data root)."""
    import csv

    target_dir.mkdir(parents=True, exist_ok=True)
    with open(source, newline="") as f:
        reader = csv.reader(f)
        header, rows = next(reader), list(reader)
    header, rows = edit(header, rows)
    with open(target_dir / "data.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return target_dir


def write_toy_model(path: str) -> None:
    """A TF1-style SavedModel with classify and regress signatures: y = 2x + 1, P(yes) = sigmoid(x)."""
    import tensorflow as tf

    with tf.Graph().as_default(), tf.compat.v1.Session() as session:
        serialized = tf.compat.v1.placeholder(tf.string, [None], name="tf_example")
        x = tf.io.parse_example(serialized, {"x": tf.io.FixedLenFeature([1], tf.float32)})["x"]
        two = tf.compat.v1.Variable(2.0, name="two")
        score = tf.sigmoid(x)
        scores = tf.concat([1 - score, score], axis=1)
        classes = tf.tile(tf.constant([[b"no", b"yes"]]), [tf.shape(x)[0], 1])
        session.run(tf.compat.v1.global_variables_initializer())
        builder = tf.compat.v1.saved_model.Builder(path)
        builder.add_meta_graph_and_variables(session, ["serve"], signature_def_map={
            "classify": tf.compat.v1.saved_model.classification_signature_def(serialized, classes, scores),
            "regress": tf.compat.v1.saved_model.regression_signature_def(serialized, two * x + 1),
        })
        builder.save()


def pytest_configure(config):
    """Hypothesis keeps its files (caches built when strategies are defined, at import) in a temporary directory,
    not .hypothesis/ in the checkout."""
    import shutil
    import tempfile

    from hypothesis.configuration import set_hypothesis_home_dir

    home = tempfile.mkdtemp(prefix="hypothesis-")
    set_hypothesis_home_dir(home)
    config.add_cleanup(lambda: shutil.rmtree(home, ignore_errors=True))
