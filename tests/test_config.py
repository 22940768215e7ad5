"""Configuration: profiles, overlays, env overrides, and every documented error."""
import os

import pytest

from pipeline.config import ConfigError, load_config

SMALL_DATA = os.path.join(os.path.dirname(__file__), "data", "taxi_small")


def _env(tmp_path, overlay=None, **extra):
    env = {"TFX_E2E_OUTPUT_ROOT": str(tmp_path / "out")}
    if overlay is not None:
        path = tmp_path / "overlay.yaml"
        path.write_text(overlay)
        env["TFX_E2E_CONFIG"] = str(path)
    env.update(extra)
    return env


def test_local_profile_defaults_and_derived_paths(tmp_path):
    config = load_config(env=_env(tmp_path))
    assert config.profile == "local"
    assert config.data_root.endswith(os.path.join("data", "taxi"))
    assert config.tuner.enabled is True
    assert config.output_root == str(tmp_path / "out")
    assert config.metadata_path == str(tmp_path / "out" / "metadata" / "chicago-taxi" / "metadata.db")
    assert config.serving_model_dir == str(tmp_path / "out" / "serving" / "chicago_taxi")
    assert config.pipeline_root == str(tmp_path / "out" / "pipelines" / "chicago-taxi")


def test_env_overrides_and_overlay(tmp_path):
    config = load_config(env=_env(tmp_path, "trainer: {train_steps: 7}\ntuner: {enabled: false}\n",
                                  TFX_E2E_DATA_ROOT=SMALL_DATA))
    assert config.data_root == os.path.abspath(SMALL_DATA)
    assert config.trainer.train_steps == 7
    assert config.trainer.batch_size == 128  # untouched keys keep the profile's values
    assert config.tuner.enabled is False


def test_image_from_the_environment_reaches_dataflow_args(tmp_path):
    overlay = ("gcp: {project: p, region: r}\n"
               "dataflow: {enabled: true, temp_location: gs://b/tmp, staging_location: gs://b/staging}\n")
    image = "europe-west4-docker.pkg.dev/p/tfx-e2e/pipeline:0123abc"
    config = load_config(env=_env(tmp_path, overlay, TFX_E2E_IMAGE=image))
    assert config.image == image
    assert f"--sdk_container_image={image}" in config.beam_args
    with pytest.raises(ConfigError, match=r"image: required by dataflow.enabled: .*TFX_E2E_IMAGE"):
        load_config(env=_env(tmp_path, overlay))


@pytest.mark.parametrize("overlay, message", [
    ("trainer: {trian_steps: 5}\n", "unknown key 'trainer.trian_steps' (did you mean 'trainer.train_steps'?)"),
    ("trainer: {train_steps: many}\n", "trainer.train_steps: expected int, got str 'many'"),
    ("tuner: {enabled: 'yes'}\n", "tuner.enabled: expected bool, got str 'yes'"),
    ("evaluator: {slices: payment_type}\n", "evaluator.slices: expected a list, got str 'payment_type'"),
    ("evaluator: {auc_lower_bound: 1.5}\n", "evaluator.auc_lower_bound: must be within [0, 1], got 1.5"),
    ("trainer: {batch_size: 0}\n", "trainer.batch_size: must be at least 1, got 0"),
    ("pipeline_nmae: x\n", "unknown key 'pipeline_nmae' (did you mean 'pipeline_name'?)"),
    ("trainer: [1, 2]\n", "trainer: expected a mapping, got list"),
    ("trainer: {train_steps: 5\n", "is not valid YAML"),
    ("serving: {rest_port: 8500}\n", "serving.rest_port and serving.grpc_port: must differ, both are 8500"),
    ("serving: {version_policy: newest}\n", "serving.version_policy: must be latest, all or specific, got 'newest'"),
    ("serving: {version_policy: specific}\n", "serving.versions: version_policy specific needs at least one version"),
    ("serving: {version_policy: specific, versions: [1], labels: {canary: 2}}\n",
     "serving.labels.canary: version 2 is not in serving.versions [1]"),
    ("serving: {labels: {stable: latest}}\n", "serving.labels.stable: expected int, got str 'latest'"),
    ("serving: {batching: {max_batch_size: 0}}\n", "serving.batching.max_batch_size: must be at least 1, got 0"),
])
def test_overlay_errors_name_the_key(tmp_path, overlay, message):
    with pytest.raises(ConfigError) as error:
        load_config(env=_env(tmp_path, overlay))
    assert message in str(error.value)


def test_missing_data_root(tmp_path):
    with pytest.raises(ConfigError, match=r"data_root: directory not found: .*nowhere"):
        load_config(env=_env(tmp_path, TFX_E2E_DATA_ROOT=str(tmp_path / "nowhere")))


def test_data_root_without_csv(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"data_root: no \*\.csv files in .*empty"):
        load_config(env=_env(tmp_path, TFX_E2E_DATA_ROOT=str(tmp_path / "empty")))


def test_empty_csv_file(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "trips.csv").write_text("")
    with pytest.raises(ConfigError, match=r"data_root: empty CSV file\(s\): .*trips\.csv"):
        load_config(env=_env(tmp_path, TFX_E2E_DATA_ROOT=str(tmp_path / "data")))


def test_unknown_profile(tmp_path):
    with pytest.raises(ConfigError, match=r"TFX_E2E_PROFILE: unknown profile 'lcoal' \(known: .*local"):
        load_config(env=_env(tmp_path, TFX_E2E_PROFILE="lcoal"))


def test_unknown_environment_variable_is_a_typo(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown variable\(s\) TFX_E2E_DATAROOT"):
        load_config(env=_env(tmp_path, TFX_E2E_DATAROOT="/tmp"))


def test_overlay_file_not_found(tmp_path):
    with pytest.raises(ConfigError, match=r"TFX_E2E_CONFIG: file not found: .*nope\.yaml"):
        load_config(env=_env(tmp_path, TFX_E2E_CONFIG=str(tmp_path / "nope.yaml")))


def test_missing_schema_file(tmp_path):
    with pytest.raises(ConfigError, match=r"schema_path: file not found: .*missing\.pbtxt"):
        load_config(env=_env(tmp_path, f"schema_path: {tmp_path / 'missing.pbtxt'}\n"))


def test_serving_loads_without_the_pipeline_inputs(tmp_path):
    """check_data=False (the model server): no data root or schema file needed; every key is still checked."""
    env = _env(tmp_path, f"schema_path: {tmp_path / 'missing.pbtxt'}\n", TFX_E2E_DATA_ROOT=str(tmp_path / "nowhere"))
    config = load_config(env=env, check_data=False)
    assert config.data_root == str(tmp_path / "nowhere")
    assert config.serving_model_dir == str(tmp_path / "out" / "serving" / "chicago_taxi")
    with pytest.raises(ConfigError, match=r"data_root: directory not found: .*nowhere"):
        load_config(env=_env(tmp_path, TFX_E2E_DATA_ROOT=str(tmp_path / "nowhere")))
    with pytest.raises(ConfigError, match=r"serving.rest_port and serving.grpc_port: must differ"):
        load_config(env=_env(tmp_path, "serving: {rest_port: 8500}\n", TFX_E2E_DATA_ROOT=str(tmp_path / "nowhere")),
                    check_data=False)


def test_continuous_defaults(tmp_path):
    config = load_config(env=_env(tmp_path))
    assert (config.continuous.window_spans, config.continuous.settle_seconds, config.continuous.min_examples) == (
        1, 0.0, 1)
    assert isinstance(config.continuous.settle_seconds, float)
    assert config.span is None  # the newest complete span, resolved when a run starts


@pytest.mark.parametrize("overlay, message", [
    ("continuous: {window_spans: 0}\n", "continuous.window_spans: must be at least 1, got 0"),
    ("continuous: {settle_seconds: -1}\n", "continuous.settle_seconds: must be >= 0, got -1.0"),
    ("continuous: {min_examples: -5}\n", "continuous.min_examples: must be >= 0, got -5"),
    ("continuous: {min_examples: few}\n", "continuous.min_examples: expected int, got str 'few'"),
    ("continuous: {window: 2}\n", "unknown key 'continuous.window' (did you mean 'continuous.window_spans'?)"),
    ("span: 3\n", "'span' is not a configuration key: the span a run reads is a run parameter"),
])
def test_continuous_errors_name_the_key(tmp_path, overlay, message):
    with pytest.raises(ConfigError) as error:
        load_config(env=_env(tmp_path, overlay))
    assert message in str(error.value)


@pytest.mark.parametrize("extra, span", [
    ({"TFX_E2E_SPAN": "16"}, 16),
    ({"TFX_E2E_DATE": "2016-12-31"}, 17166),  # days since 1970-01-01, as TFX's {YYYY}-{MM}-{DD} spec counts
    ({"TFX_E2E_DATE": "1970-01-01"}, 0),
    ({}, None),
])
def test_span_from_the_environment(tmp_path, extra, span):
    assert load_config(env=_env(tmp_path, **extra)).span == span


@pytest.mark.parametrize("extra, message", [
    ({"TFX_E2E_SPAN": "latest"}, "TFX_E2E_SPAN: expected a span number, got 'latest'"),
    ({"TFX_E2E_SPAN": "-2"}, "TFX_E2E_SPAN: a span number is >= 0, got -2"),
    ({"TFX_E2E_DATE": "2016-02-30"}, "TFX_E2E_DATE: expected a date YYYY-MM-DD, got '2016-02-30'"),
    ({"TFX_E2E_SPAN": "3", "TFX_E2E_DATE": "2016-01-01"}, "TFX_E2E_SPAN and TFX_E2E_DATE: give one of them"),
])
def test_span_errors(tmp_path, extra, message):
    with pytest.raises(ConfigError) as error:
        load_config(env=_env(tmp_path, **extra))
    assert message in str(error.value)


def test_a_data_root_of_span_folders_is_accepted(tmp_path):
    root = tmp_path / "spans"
    (root / "span-1").mkdir(parents=True)
    (root / "span-1" / "data.csv").write_text("a,b\n1,2\n")
    config = load_config(env=_env(tmp_path, TFX_E2E_DATA_ROOT=str(root)))
    assert config.data_root == str(root)
    # Mixed span-N/ and YYYY-MM-DD/ folders for the same span are a data_root error.
    (root / "1970-01-02").mkdir()
    with pytest.raises(ConfigError, match=r"data_root .*: span 1 appears twice"):
        load_config(env=_env(tmp_path, TFX_E2E_DATA_ROOT=str(root)))


def test_a_commands_configuration_error_exits_2_with_one_line(tmp_path, capsys):
    from pipeline.config import exit_on_config_error, load_config_or_exit

    with pytest.raises(SystemExit) as done:
        load_config_or_exit(env=_env(tmp_path, TFX_E2E_PROFILE="lcoal"))
    assert done.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: configuration: TFX_E2E_PROFILE: unknown profile 'lcoal'") and err.count("\n") == 1
    with pytest.raises(SystemExit) as done, exit_on_config_error("error: ", also=(OSError,)):
        raise OSError("no such file")
    assert (done.value.code, capsys.readouterr().err) == (2, "error: no such file\n")
    with pytest.raises(KeyError), exit_on_config_error():  # anything else is not a configuration error
        raise KeyError("x")
