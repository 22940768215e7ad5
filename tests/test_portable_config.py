"""The portable, flink and spark profiles: their Beam arguments and the checks that refuse what cannot run; when the
portable runner's services start."""
import contextlib
import os
import sys

import pytest
from conftest import SMALL_DATA

from pipeline.config import FLINK_VERSIONS, ConfigError, load_config
from runners import harness, runlock


def _load(tmp_path, profile: str, overlay: str = ""):
    (tmp_path / "overlay.yaml").write_text(overlay)
    return load_config(profile, env={"TFX_E2E_CONFIG": str(tmp_path / "overlay.yaml"),
                                     "TFX_E2E_OUTPUT_ROOT": str(tmp_path / "out")})


def test_portable_profile_submits_to_the_job_service_with_external_workers(tmp_path):
    config = _load(tmp_path, "portable")
    assert config.beam_args == ["--runner=PortableRunner", "--job_endpoint=localhost:8099",
                                "--environment_type=EXTERNAL", "--environment_config=localhost:50001"]
    assert config.portable.worker_pools == ["localhost:50001", "localhost:50002"]


def test_flink_and_spark_arguments_for_an_operators_job_server_jar(tmp_path):
    jar = tmp_path / "beam-runners-flink-1.18-job-server-2.59.0.jar"
    jar.write_bytes(b"PK")
    flink = _load(tmp_path, "flink", f"portable: {{flink_master: 'flink-jm:8081', job_server_jar: '{jar}', "
                                     "worker_pools: ['10.0.0.5:50000']}\n")
    assert flink.beam_args == ["--runner=FlinkRunner", "--flink_master=flink-jm:8081", "--flink_version=1.18",
                               f"--flink_job_server_jar={jar}", "--environment_type=EXTERNAL",
                               "--environment_config=10.0.0.5:50000"]
    spark = _load(tmp_path, "spark", f"image: 'registry/p:1'\nportable: {{spark_master_url: 'spark://master:7077', "
                                     f"job_server_jar: '{jar}'}}\n")
    assert spark.beam_args == ["--runner=SparkRunner", "--spark_master_url=spark://master:7077",
                               f"--spark_job_server_jar={jar}", "--environment_type=DOCKER",
                               "--environment_config=registry/p:1"]


@pytest.mark.parametrize(("profile", "overlay", "message"), [
    ("flink", "", "portable.flink_master: the Flink JobManager's REST address"),
    ("flink", "portable: {flink_master: 'jm:8081'}\n",
     "portable.job_server_jar: required by the flink runner: the path of Beam's job server jar "
     "(beam-runners-flink-1.18-job-server-2.59.0.jar), which this project does not download"),
    ("flink", "portable: {flink_master: 'jm:8081', flink_version: '1.12', job_server_jar: x.jar}\n",
     "portable.flink_version: Beam 2.59's Flink job servers are for Flink 1.15, 1.16, 1.17, 1.18, got '1.12'"),
    ("flink", "portable: {flink_master: 'jm:8081', job_server_jar: /nowhere/job-server.jar}\n",
     "portable.job_server_jar: not a .jar file: /nowhere/job-server.jar"),
    ("spark", "portable: {spark_master_url: 'local[4]'}\n", "portable.spark_master_url: spark://host:port"),
    ("portable", "portable: {worker_pools: []}\n", "portable.worker_pools: the portable runner needs at least one"),
    ("portable", "portable: {worker_pools: ['pool-a']}\n", "portable.worker_pools[0]: a worker pool's host:port"),
    ("portable", "portable: {worker_pools: ['10.1.2.3:50000']}\n",
     "portable.services: start runs the job service and worker pools on this machine's loopback"),
    ("portable", "portable: {runner: flonk}\n", "portable.runner: must be '', 'portable', 'flink' or 'spark'"),
])
def test_what_cannot_run_is_refused_with_the_key(tmp_path, profile, overlay, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        _load(tmp_path, profile, overlay)


def test_flink_without_workers_or_image_is_refused(tmp_path):
    jar = tmp_path / "job-server.jar"
    jar.write_bytes(b"PK")
    with pytest.raises(ConfigError, match="need worker pools .environment EXTERNAL. or the project's image"):
        _load(tmp_path, "flink", f"portable: {{flink_master: 'http://jm:8081', job_server_jar: '{jar}'}}\n")


def test_the_flink_versions_are_beams():
    from apache_beam.options.pipeline_options import FlinkRunnerOptions

    assert list(FLINK_VERSIONS) == FlinkRunnerOptions.PUBLISHED_FLINK_VERSIONS


def test_each_beam_component_takes_the_next_worker_pool(tmp_path):
    from pipeline.pipeline import create_pipeline

    config = _load(tmp_path, "portable", "tuner: {enabled: false}\n")
    pools = {c.id: c.executor_spec.beam_pipeline_args[-1] for c in create_pipeline(config).components
             if hasattr(c.executor_spec, "beam_pipeline_args")}
    assert pools == {"ExampleGen": "--environment_config=localhost:50001",
                     "StatisticsGen": "--environment_config=localhost:50002",
                     "Transform": "--environment_config=localhost:50001",
                     "Evaluator": "--environment_config=localhost:50002"}


def _never_run():
    raise AssertionError("the orchestrator must not start")


def test_the_services_a_run_needs_start_only_when_it_runs(tmp_path, monkeypatch):
    """harness.run(services=...), runners/portable_runner.py's job service and worker pools: none for a run the run
    lock refuses; started with the lock held, after the checks, and one that cannot start exits with the lock
    released."""
    for key in [k for k in os.environ if k.startswith("TFX_E2E_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("TFX_E2E_OUTPUT_ROOT", str(tmp_path / "out"))
    monkeypatch.setenv("TFX_E2E_DATA_ROOT", str(SMALL_DATA))
    lock_path = runlock.run_lock_path(load_config("portable"))
    started = []

    @contextlib.contextmanager
    def services(config):
        with pytest.raises(runlock.LockHeld):
            runlock.Lock(lock_path).acquire(by="a second run")
        started.append(config.profile)
        sys.exit("error: portable runner: the job service did not start")
        yield

    with runlock.Lock(lock_path).acquire(by="another run"), pytest.raises(SystemExit) as done:
        harness.run(_never_run, default_profile="portable", services=services)
    assert done.value.code == 1 and started == []
    with pytest.raises(SystemExit) as done:
        harness.run(_never_run, default_profile="portable", services=services)
    assert done.value.code == "error: portable runner: the job service did not start" and started == ["portable"]
    with runlock.Lock(lock_path).acquire(by="the next run"):
        pass
