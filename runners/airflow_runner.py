"""The pipeline as an Airflow 2 / Cloud Composer DAG (profile `airflow`): put this file in the DAGs folder
(with the project installed in Airflow's environment); schedule, start date, catchup and retries come
from the configuration's `airflow` section.

    AIRFLOW_HOME=... airflow dags test chicago-taxi
"""
import datetime

from runners.harness import load_or_exit


def _dag():
    from tfx.orchestration.airflow.airflow_dag_runner import AirflowDagRunner, AirflowPipelineConfig

    from pipeline.pipeline import create_pipeline

    config = load_or_exit(default_profile="airflow")
    dag_config = {
        "schedule": config.airflow.schedule or None,
        "start_date": datetime.datetime.fromisoformat(config.airflow.start_date),
        "catchup": config.airflow.catchup,
        "default_args": {"retries": config.airflow.retries},
    }
    return AirflowDagRunner(AirflowPipelineConfig(airflow_dag_config=dag_config)).run(create_pipeline(config))


# Airflow collects module-level DAG objects.
DAG = _dag()
