"""ML Metadata on a database server (metadata: mysql, pipeline/metadata.py) and runs that share a store.

The services tests use the machine's MariaDB (127.0.0.1:3306, root without a password; .ci/run starts it) and
PostgreSQL (127.0.0.1:5432, user postgres: why it is refused), each in a database of its own, dropped at the end.
Two runs start at the same moment on one new database (two output roots, as runs on Composer's workers or
Kubeflow Pipelines share one ML Metadata database): both complete, each summary is its own run's, the store holds
both runs complete, and an unchanged re-run is a cache hit in every component. The unit tests: configuration, a
store that cannot be opened (a closed port, a file that is not SQLite) stops the run at once with one line naming
it, and the summary and the `why` record find their own run in a store that holds another, newer one.
"""
import logging
import os
import re
import socket
import subprocess
import sys
import uuid

import pytest
from conftest import SMALL_DATA, PipelineRun
from ml_metadata.proto import metadata_store_pb2

from pipeline import metadata
from pipeline.config import ENV_METADATA_PASSWORD, REPO_ROOT, ConfigError, load_config

NODES = ["ExampleGen", "ImportSchemaGen", "StatisticsGen", "ExampleValidator", "previous_statistics_resolver",
         "DataGate", "Transform", "Trainer", "latest_blessed_model_resolver", "Evaluator", "Pusher"]
OVERLAY = """
tuner: {{enabled: false}}
trainer: {{train_steps: 100, eval_steps: 10, batch_size: 64}}
evaluator: {{auc_lower_bound: {auc}}}
metadata: mysql
metadata_server: {{host: 127.0.0.1, port: {port}, database: {database}, user: {user}}}
"""
RUN_ID = re.compile(r"^Run summary: pipeline '[^']+', profile '[^']+', run (\S+), ", re.M)
DONE = (metadata_store_pb2.Execution.COMPLETE, metadata_store_pb2.Execution.CACHED)


def _overlay(tmp_path, name: str, port: int = 3306, database: str = "tfx_e2e", user: str = "root",
             auc: float = 0.6):
    path = tmp_path / f"{name}.yaml"
    path.write_text(OVERLAY.format(port=port, database=database, user=user, auc=auc))
    return path


def _env(overlay, data_root, output_root, **extra) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TFX_E2E_")}
    env.update(TFX_E2E_CONFIG=str(overlay), TFX_E2E_DATA_ROOT=str(data_root), TFX_E2E_OUTPUT_ROOT=str(output_root),
               TFX_E2E_ALWAYS_RUN="1", TF_CPP_MIN_LOG_LEVEL="2", **extra)
    return env


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- configuration --------------------------------------------------------------------------------------------


def test_a_server_needs_its_user_and_takes_the_password_only_from_the_environment(tmp_path, monkeypatch, caplog):
    env = {"TFX_E2E_OUTPUT_ROOT": str(tmp_path), "TFX_E2E_DATA_ROOT": str(SMALL_DATA)}
    (tmp_path / "nouser.yaml").write_text("metadata: mysql\n")
    with pytest.raises(ConfigError, match=r"metadata_server.user: required by metadata: mysql"):
        load_config(env=dict(env, TFX_E2E_CONFIG=str(tmp_path / "nouser.yaml")))
    (tmp_path / "password.yaml").write_text("metadata: mysql\nmetadata_server: {user: u, password: secret}\n")
    with pytest.raises(ConfigError, match=r"unknown key 'metadata_server.password'"):
        load_config(env=dict(env, TFX_E2E_CONFIG=str(tmp_path / "password.yaml")))
    (tmp_path / "port.yaml").write_text("metadata: mysql\nmetadata_server: {user: u, port: 70000}\n")
    with pytest.raises(ConfigError, match=r"metadata_server.port: must be a port number"):
        load_config(env=dict(env, TFX_E2E_CONFIG=str(tmp_path / "port.yaml")))
    (tmp_path / "pg.yaml").write_text("metadata: postgresql\nmetadata_server: {user: u}\n")
    with pytest.raises(ConfigError, match=r"metadata: postgresql is not supported: ML Metadata 1.16 cannot store a "
                                          r"string that holds a backslash on PostgreSQL"):
        load_config(env=dict(env, TFX_E2E_CONFIG=str(tmp_path / "pg.yaml")))

    monkeypatch.setenv(ENV_METADATA_PASSWORD, "s3cret-pw")
    overlay = _overlay(tmp_path, "mysql", port=0, database="mlmd", user="tfx")
    config = load_config(env=dict(env, TFX_E2E_CONFIG=str(overlay), **{ENV_METADATA_PASSWORD: "s3cret-pw"}))
    assert "s3cret-pw" not in repr(config)  # the configuration (and the run fingerprint) never holds it
    server = metadata.connection_config(config).mysql
    assert (server.host, server.port, server.database, server.user, server.password) == (
        "127.0.0.1", 3306, "mlmd", "tfx", "s3cret-pw")
    assert metadata.describe(config) == "MySQL database 'mlmd' on 127.0.0.1:3306 (user 'tfx')"
    # TFX's runners log their connection config (LocalDagRunner at INFO): the password is masked.
    logging.getLogger("absl").warning("Using connection config:\n %s", metadata.connection_config(config).mysql)
    assert 'password: "****"' in caplog.text and "s3cret-pw" not in caplog.text


# --- a store that cannot be opened ----------------------------------------------------------------------------


def test_an_unreachable_database_stops_the_run_with_one_line_naming_it(tmp_path, capfd):
    port = _closed_port()
    run = PipelineRun(tmp_path, SMALL_DATA, overlay=_overlay(tmp_path, "closed", port=port).read_text())
    assert run() == 1
    err = capfd.readouterr().err
    assert (f"error: ML Metadata: cannot open MySQL database 'tfx_e2e' on 127.0.0.1:{port} (user 'root'): nothing "
            f"answers on 127.0.0.1:{port}") in err
    assert "nothing was run or pushed" in err and "Traceback" not in err
    assert not (tmp_path / "output" / "serving").exists() and not (tmp_path / "output" / "pipelines").exists()


@pytest.mark.parametrize("race", [
    "There are a subset of tables in MLMD instance. This may be due to concurrent connection to the empty "
    "database. Please retry the connection.",
    "mysql_query aborted: errno: Deadlock found when trying to get lock; try restarting transaction, error: Deadlock "
    "found when trying to get lock; try restarting transaction",
])
def test_opening_a_new_database_outwaits_the_run_creating_its_tables(tmp_path, monkeypatch, race):
    """ML Metadata tells the runs that lose the race to create a new database's tables to retry (or MariaDB ends one
    as a deadlock victim); the winner may take many tries' time on a loaded machine (six tries ran out in CI), so
    the retries last a time, not a count."""
    import ml_metadata as mlmd
    calls = []

    def store(connection):
        calls.append(connection)
        if len(calls) < 12:
            raise RuntimeError(race)
        return "store"

    monkeypatch.setattr(mlmd, "MetadataStore", store)
    monkeypatch.setattr(metadata.time, "sleep", lambda seconds: None)
    config = load_config(env={"TFX_E2E_CONFIG": str(_overlay(tmp_path, "race")), "TFX_E2E_OUTPUT_ROOT": str(tmp_path),
                              "TFX_E2E_DATA_ROOT": str(SMALL_DATA)})
    assert metadata.open_store(config) == "store" and len(calls) == 12

    clock = iter(range(0, 1000, 10))  # ten seconds pass per try: a race that never ends is given up within a minute
    monkeypatch.setattr(metadata.time, "monotonic", lambda: next(clock))
    calls.clear()
    with pytest.raises(metadata.MetadataError, match=r"cannot open MySQL database 'tfx_e2e' on 127.0.0.1:3306 "
                                                     r"\(user 'root'\): " + re.escape(race[:40])):
        metadata.open_store(config)
    assert len(calls) == 7


def test_a_corrupt_metadata_file_stops_the_run_with_one_line_naming_it(tmp_path, capfd):
    run = PipelineRun(tmp_path, SMALL_DATA)
    store = run.config().metadata_path
    os.makedirs(os.path.dirname(store))
    with open(store, "wb") as f:
        f.write(b"not a database, " * 256)
    assert run() == 1
    err = capfd.readouterr().err
    assert f"error: ML Metadata: cannot open the SQLite file {store}: file is not a database" in err
    assert "Traceback" not in err
    assert not (tmp_path / "output" / "serving").exists() and not (tmp_path / "output" / "pipelines").exists()


# --- the run a summary reads ----------------------------------------------------------------------------------


def _add_run(store, ids: dict, run_id: str, state: int) -> None:
    """A pipeline run as TFX files it: a `pipeline_run` context (child of the pipeline's) and the Trainer's
    execution in it and in the node's context."""
    run = store.put_contexts([metadata_store_pb2.Context(type_id=ids["pipeline_run"], name=run_id)])[0]
    store.put_parent_contexts([metadata_store_pb2.ParentContext(parent_id=ids["pipeline"], child_id=run)])
    [execution] = store.put_executions([metadata_store_pb2.Execution(type_id=ids["Trainer"], last_known_state=state)])
    store.put_attributions_and_associations([], [
        metadata_store_pb2.Association(context_id=run, execution_id=execution),
        metadata_store_pb2.Association(context_id=ids["node"], execution_id=execution)])


def test_the_summary_and_the_why_record_find_their_own_run_not_the_newest(tmp_path):
    """A shared store holds another, newer run of the same pipeline (a run on another output root or worker): the
    summary reads, and `why` records into, the run it names."""
    from runners import summary, why

    config = load_config(env={"TFX_E2E_OUTPUT_ROOT": str(tmp_path), "TFX_E2E_DATA_ROOT": str(SMALL_DATA)})
    store = metadata.open_store(config)
    ids = {name: store.put_context_type(metadata_store_pb2.ContextType(name=name))
           for name in ("pipeline", "pipeline_run", "node")}
    ids["Trainer"] = store.put_execution_type(metadata_store_pb2.ExecutionType(name="Trainer"))
    ids["pipeline"] = store.put_contexts([metadata_store_pb2.Context(type_id=ids["pipeline"],
                                                                     name=config.pipeline_name)])[0]
    ids["node"] = store.put_contexts([metadata_store_pb2.Context(type_id=ids["node"],
                                                                 name=f"{config.pipeline_name}.Trainer")])[0]
    _add_run(store, ids, "mine", metadata_store_pb2.Execution.COMPLETE)
    _add_run(store, ids, "theirs", metadata_store_pb2.Execution.FAILED)  # newer

    assert summary.latest_run(store, config, "mine")["Trainer"].status == "ran"
    assert summary.latest_run(store, config, "theirs")["Trainer"].status == "FAILED"
    assert summary.latest_run(store, config)["Trainer"].status == "FAILED"  # no run named: the newest
    assert why.record(config, "mine", "event")
    reasons = {c.name: c.custom_properties[why.REASON_PROPERTY].string_value
               for c in store.get_contexts_by_type("pipeline_run")}
    assert reasons == {"mine": "event", "theirs": ""}


# --- on MariaDB and PostgreSQL --------------------------------------------------------------------------------


def _mysql(sql: str) -> str:
    return subprocess.run(["mysql", "-h127.0.0.1", "-P3306", "-uroot", "-N", "-e", sql], check=True,
                          capture_output=True, text=True, timeout=60).stdout


def _executions_of_run(store, run_id: str) -> dict[str, list[int]]:
    """node id -> the states of the run's executions of it."""
    run = store.get_context_by_type_and_name("pipeline_run", run_id)
    assert run is not None, run_id
    nodes = {}
    for execution in store.get_executions_by_context(run.id):
        [node] = [c.name.split(".", 1)[1] for c in store.get_contexts_by_execution(execution.id)
                  if c.type_id == store.get_context_type("node").id]
        nodes.setdefault(node, []).append(execution.last_known_state)
    return nodes


def _run(env, log_path, wait=True):
    log = open(log_path, "w")  # a file, not a pipe: neither run waits for the test to read its output
    process = subprocess.Popen([sys.executable, "-m", "runners.local_runner"], cwd=REPO_ROOT, env=env,
                               stdout=log, stderr=subprocess.STDOUT)
    log.close()
    if wait:
        process.wait(timeout=900)
    return process


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """Runs A and B of pipeline chicago-taxi, started at the same moment on one new MariaDB database from two output
    roots: A on the slice (3,001 rows) as a user with a password, B on its first 2,000 rows, as root, with an AUC
    bound its model cannot reach (so its result differs from A's: not blessed, nothing pushed)."""
    tmp = tmp_path_factory.mktemp("mlmd-mysql")
    suffix = uuid.uuid4().hex[:10]
    database, user, password = f"tfx_e2e_test_{suffix}", f"tfx_e2e_{suffix}", f"pw-{uuid.uuid4().hex}"
    _mysql(f"CREATE USER '{user}'@'127.0.0.1' IDENTIFIED BY '{password}'; "
           f"GRANT ALL ON `{database}`.* TO '{user}'@'127.0.0.1'")
    subset = tmp / "data-b"
    subset.mkdir()
    lines = (SMALL_DATA / "data.csv").read_text().splitlines(keepends=True)
    (subset / "data.csv").write_text("".join(lines[:2001]))
    env_a = _env(_overlay(tmp, "a", database=database, user=user), SMALL_DATA, tmp / "out-a",
                 **{ENV_METADATA_PASSWORD: password})
    env_b = _env(_overlay(tmp, "b", database=database, auc=0.999), subset, tmp / "out-b")
    try:
        a, b = _run(env_a, tmp / "a.log", wait=False), _run(env_b, tmp / "b.log", wait=False)
        codes = a.wait(timeout=1200), b.wait(timeout=1200)
        yield dict(tmp=tmp, database=database, password=password, env_a=env_a, env_b=env_b, codes=codes,
                   logs=((tmp / "a.log").read_text(), (tmp / "b.log").read_text()), rows=(len(lines) - 1, 2000))
    finally:
        _mysql(f"DROP DATABASE IF EXISTS `{database}`; DROP USER IF EXISTS '{user}'@'127.0.0.1'")


@pytest.mark.services
def test_two_runs_at_once_on_one_database_each_complete_and_report_their_own(two_runs):
    log_a, log_b = two_runs["logs"]
    assert two_runs["codes"] == (0, 0), (log_a[-3000:], log_b[-3000:])
    assert two_runs["database"] in _mysql("SHOW DATABASES")  # ML Metadata created it
    assert two_runs["password"] not in log_a  # the password is in no log line (TFX logs its connection config)

    config_a, config_b = load_config(env=two_runs["env_a"]), load_config(env=two_runs["env_b"])
    run_a, run_b = RUN_ID.search(log_a).group(1), RUN_ID.search(log_b).group(1)
    assert run_a != run_b
    # Each summary is its own run's: its data, its blessing, its push.
    rows_a, rows_b = two_runs["rows"]
    assert f"(one span, {rows_a} rows)" in log_a and f"(one span, {rows_b} rows)" in log_b
    assert "Model BLESSED" in log_a and "Model NOT blessed" in log_b
    pushed = re.search(r"^Pushed version (\d+): (\S+)$", log_a, re.M)
    assert pushed and pushed.group(2) == os.path.join(config_a.serving_model_dir, pushed.group(1))
    assert os.path.isfile(os.path.join(pushed.group(2), "saved_model.pb"))
    assert "Nothing pushed: the model was not blessed." in log_b
    assert not os.path.exists(config_b.serving_model_dir)
    assert "Result: OK" in log_a and "Result: OK" in log_b

    # A consistent store: both runs under the pipeline, every node once in each, nothing left running.
    store = metadata.open_store(config_b)  # as root: A's password is in A's environment only
    [pipeline] = store.get_contexts_by_type("pipeline")
    assert sorted(c.name for c in store.get_children_contexts_by_context(pipeline.id)) == sorted([run_a, run_b])
    for run_id in (run_a, run_b):
        executions = _executions_of_run(store, run_id)
        assert sorted(executions) == sorted(NODES) and all(len(states) == 1 for states in executions.values())
        for node in ("ExampleGen", "Transform", "Trainer", "Evaluator", "Pusher"):  # their data differ: no cache hit
            assert executions[node] == [metadata_store_pb2.Execution.COMPLETE], (run_id, node)
        context = store.get_context_by_type_and_name("pipeline_run", run_id)
        assert context.custom_properties["tfx_e2e_reason"].string_value == "manual"  # why, on its own run
    # ImportSchemaGen (the same file for both) may reuse the other run's Schema: the cache spans the pipeline.
    assert all(e.last_known_state in DONE for e in store.get_executions())
    for artifact in store.get_artifacts():
        assert artifact.state == metadata_store_pb2.Artifact.LIVE and os.path.exists(artifact.uri), artifact.uri


@pytest.mark.services
def test_an_unchanged_rerun_on_the_database_is_a_cache_hit_in_every_component(two_runs):
    assert two_runs["codes"][0] == 0
    log = two_runs["tmp"] / "a-again.log"
    assert _run(two_runs["env_a"], log).returncode == 0, log.read_text()[-3000:]
    out = log.read_text()
    store = metadata.open_store(load_config(env=two_runs["env_b"]))  # as root: A's password is A's only
    executions = _executions_of_run(store, RUN_ID.search(out).group(1))
    for node in NODES:
        expected = (metadata_store_pb2.Execution.COMPLETE if node.endswith("_resolver")  # resolvers have no cache
                    else metadata_store_pb2.Execution.CACHED)
        assert executions[node] == [expected], node
    assert "Nothing new to push: this model is already served as version" in out


@pytest.mark.services
def test_ml_metadata_cannot_store_a_backslash_on_postgresql(tmp_path):
    """Why `metadata: postgresql` is refused (docs/configuration.md): ML Metadata 1.16's binary connects to PostgreSQL
    and creates the database and its tables, but a string property holding a backslash (every JSON property with
    an escaped quote: the Evaluator's eval_config) is a syntax error. A whole run on PostgreSQL 15 failed so at the
    Evaluator. When this test fails, ML Metadata has fixed it: offer postgresql then."""
    import ml_metadata as mlmd
    import psycopg2

    database = f"tfx_e2e_test_{uuid.uuid4().hex[:10]}"
    connection = metadata_store_pb2.ConnectionConfig()
    connection.postgresql.host, connection.postgresql.port = "127.0.0.1", "5432"
    connection.postgresql.dbname, connection.postgresql.user = database, "postgres"
    try:
        store = mlmd.MetadataStore(connection)
        execution_type = store.put_execution_type(metadata_store_pb2.ExecutionType(name="Evaluator"))
        plain = metadata_store_pb2.Execution(type_id=execution_type)
        plain.custom_properties["eval_config"].string_value = '{"slicing_specs": [{}]}'
        [stored] = store.put_executions([plain])
        assert store.get_executions_by_id([stored])[0].custom_properties == plain.custom_properties
        escaped = metadata_store_pb2.Execution(type_id=execution_type)
        escaped.custom_properties["eval_config"].string_value = '{"name": "a \\"quoted\\" word"}'
        with pytest.raises(Exception, match="PostgreSQL metadata source error: ERROR:  syntax error"):
            store.put_executions([escaped])
    finally:
        admin = psycopg2.connect(host="127.0.0.1", port=5432, user="postgres", dbname="postgres")
        admin.autocommit = True
        with admin.cursor() as cursor:
            cursor.execute(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{database}'")
            cursor.execute(f"DROP DATABASE IF EXISTS {database}")
        admin.close()
