"""Runs the pipeline with LocalDagRunner, its Beam-based components (ExampleGen, StatisticsGen, Transform,
Evaluator) through Beam's portable job service on SDK worker pools, environment EXTERNAL (profile `portable`).

    python -m runners.portable_runner [--span N | --date YYYY-MM-DD]        (make run-portable)

portable.services: start (the default) starts Beam's job service (apache_beam.runners.portability.
local_job_service_main) on portable.job_endpoint and a worker pool (runners/worker_pool.py) on each of
portable.worker_pools, all on loopback, when the run is going to run (not for a refused or unchanged one), and
stops them whatever happened; external: they already run elsewhere (a cluster's nodes, or the network namespaces
of tests/test_portable.py).
"""
import contextlib
import os
import socket
import subprocess
import sys
import time

from pipeline.config import Config
from runners.harness import run
from runners.local_runner import local_dag_runner

READY_SECONDS = 60  # a job service or pool imports Beam (and TFX's plugins) before it listens: ~10 s on 2 cores


def _listening(address: str) -> bool:
    host, port = address.rsplit(":", 1)
    with contextlib.suppress(OSError), socket.create_connection((host, int(port)), timeout=1):
        return True
    return False


def _wait(process: subprocess.Popen, address: str, name: str, log: str) -> None:
    deadline = time.monotonic() + READY_SECONDS
    while not _listening(address):
        if process.poll() is not None or time.monotonic() > deadline:
            with open(log) as f:
                tail = f.read()[-2000:]
            why = "timed out" if process.returncode is None else f"exit status {process.returncode}"
            sys.exit(f"error: portable runner: the {name} did not start listening on {address} ({why}); its log "
                     f"{log} ends:\n{tail}")
        time.sleep(0.2)


@contextlib.contextmanager
def services(job_endpoint: str, worker_pools: list[str], log_dir: str):
    """Beam's job service on `job_endpoint` and a worker pool per address, in this virtual environment; stopped on
    exit. Each logs to <log_dir>/<name>.log. One that cannot start: exit 1 with the reason, the others stopped."""
    for address in [job_endpoint, *worker_pools]:
        if _listening(address):
            sys.exit(f"error: portable runner: {address} is already in use: stop what listens there or choose other "
                     "portable.job_endpoint / portable.worker_pools ports")
    os.makedirs(log_dir, exist_ok=True)
    commands = [("job service", job_endpoint, [sys.executable, "-m",
                 "apache_beam.runners.portability.local_job_service_main", "--port", job_endpoint.rsplit(":", 1)[1]])]
    commands += [(f"worker pool {i + 1}", address, [sys.executable, "-m", "runners.worker_pool", "--host",
                  address.rsplit(":", 1)[0].replace("localhost", "127.0.0.1"), "--port", address.rsplit(":", 1)[1]])
                 for i, address in enumerate(worker_pools)]
    started = []
    try:
        for name, address, command in commands:
            log = os.path.join(log_dir, name.replace(" ", "-") + ".log")
            with open(log, "w") as out:
                started.append(subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT))
            _wait(started[-1], address, name, log)
            print(f"  {name} on {address} (log {log})", flush=True)
        yield
    finally:
        for process in started:
            process.terminate()
        for process in started:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def run_services(config: Config):
    """What the run needs running: with portable.services: start, the job service and worker pools."""
    portable = config.portable
    if portable.runner != "portable" or portable.services == "external":
        return contextlib.nullcontext()
    print(f"Starting Beam's job service and {len(portable.worker_pools)} worker pool(s) ...", flush=True)
    return services(portable.job_endpoint, portable.worker_pools, os.path.join(config.output_root, "portable"))


if __name__ == "__main__":
    run(local_dag_runner, default_profile="portable", argv=sys.argv[1:], services=run_services)
