"""The `portable` profile end to end: the Beam-based components (ExampleGen, StatisticsGen, Transform, Evaluator) go
through Beam's job service to two SDK worker pools (environment EXTERNAL), each of the three in its own network
namespace with its own address, joined by veth pairs: the job submission and worker contract of a cluster, on one
machine. The pipeline's driver runs beside the job service (Beam's job service hands clients a `localhost` staging
endpoint). Where namespaces are not permitted (not root, no `ip`), the same run uses loopback processes, and a
RuntimeWarning says so."""
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
from conftest import SMALL_DATA

REPO = Path(__file__).resolve().parent.parent
OVERLAY = """
tuner: {enabled: false}
trainer: {train_steps: 30, eval_steps: 5, batch_size: 64}
evaluator: {auc_lower_bound: 0.6}
"""


def _ip(*args: str, ns: str | None = None) -> None:
    subprocess.run(["ip", *(["netns", "exec", ns, "ip"] if ns else []), *args], check=True, capture_output=True)


def _wait_for(log: Path, text: str, process: subprocess.Popen, seconds: float = 90) -> None:
    deadline = time.monotonic() + seconds
    while text not in (log.read_text() if log.exists() else ""):
        why = "timed out" if process.poll() is None else f"exited {process.returncode}"
        assert process.poll() is None and time.monotonic() < deadline, \
            f"{log.name}: no {text!r} ({why}):\n{log.read_text()[-3000:]}"
        time.sleep(0.2)


@contextlib.contextmanager
def namespaces(prefix: str):
    """A head namespace (job service, driver) linked by a veth pair to each of two worker namespaces, 10.N.k.1 on
    the head's side and 10.N.k.2 on worker k's. Each namespace's /etc/netns/<ns>/hosts (which `ip netns exec`
    mounts as /etc/hosts) names the head by this machine's hostname: Beam tells an EXTERNAL worker to call back
    socket.getfqdn() of the job service. Everything is removed on the way out, whatever happened."""
    net = 200 + os.getpid() % 50
    hostname = socket.gethostname()
    head, workers = f"{prefix}h", [f"{prefix}a", f"{prefix}b"]
    created = []
    try:
        for k, ns in enumerate([head, *workers]):
            _ip("netns", "add", ns)
            created.append(ns)
            head_ip = f"10.{net}.{max(k, 1)}.1"
            os.makedirs(f"/etc/netns/{ns}", exist_ok=True)
            Path(f"/etc/netns/{ns}/hosts").write_text(f"127.0.0.1 localhost\n{head_ip} {hostname}\n")
            _ip("link", "set", "lo", "up", ns=ns)
        for k, ns in enumerate(workers, start=1):
            here, there = f"{prefix}h{k}", f"{prefix}w{k}"
            _ip("link", "add", here, "type", "veth", "peer", "name", there)
            _ip("link", "set", here, "netns", head)
            _ip("link", "set", there, "netns", ns)
            _ip("addr", "add", f"10.{net}.{k}.1/24", "dev", here, ns=head)
            _ip("addr", "add", f"10.{net}.{k}.2/24", "dev", there, ns=ns)
            _ip("link", "set", here, "up", ns=head)
            _ip("link", "set", there, "up", ns=ns)
        yield head, [(ns, f"10.{net}.{k}.2") for k, ns in enumerate(workers, start=1)]
    finally:
        for ns in created:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)  # takes its veth ends with it
            shutil.rmtree(f"/etc/netns/{ns}", ignore_errors=True)


def _namespaces_permitted(prefix: str) -> str:
    """'' when this process may create network namespaces, else why not."""
    if shutil.which("ip") is None:
        return "no `ip` command"
    probe = subprocess.run(["ip", "netns", "add", f"{prefix}p"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"`ip netns add` failed: {probe.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", f"{prefix}p"], capture_output=True)
    return ""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.e2e
def test_pipeline_runs_on_a_job_service_and_two_worker_pools(tmp_path):
    prefix = f"tfx{os.getpid() % 100000}"
    logs = tmp_path / "logs"
    logs.mkdir()
    env = dict(os.environ, TFX_E2E_PROFILE="portable", TFX_E2E_DATA_ROOT=str(SMALL_DATA),
               TFX_E2E_OUTPUT_ROOT=str(tmp_path / "output"), TFX_E2E_CONFIG=str(tmp_path / "overlay.yaml"),
               TF_CPP_MIN_LOG_LEVEL="2")
    runner = [sys.executable, "-m", "runners.portable_runner"]
    why_not = _namespaces_permitted(prefix)
    processes = []
    with contextlib.ExitStack() as stack:
        if why_not:
            warnings.warn(f"network namespaces not permitted here ({why_not}): the job service and both worker "
                          "pools run as loopback processes instead", RuntimeWarning, stacklevel=1)
            pools = [f"127.0.0.1:{_free_port()}", f"127.0.0.1:{_free_port()}"]
            (tmp_path / "overlay.yaml").write_text(OVERLAY + f"portable: {{services: start, job_endpoint: "
                                                   f"'127.0.0.1:{_free_port()}', worker_pools: {pools}}}\n")
            command = runner  # portable.services: start (runners/portable_runner.py), logs in <output>/portable/
            job_log = tmp_path / "output" / "portable" / "job-service.log"
            pool_logs = [tmp_path / "output" / "portable" / f"worker-pool-{k}.log" for k in (1, 2)]
        else:
            head, workers = stack.enter_context(namespaces(prefix))
            stack.callback(lambda: [p.terminate() or p.wait(15) for p in processes])
            job_log = logs / "job-service.log"
            with open(job_log, "w") as out:
                processes.append(subprocess.Popen(
                    ["ip", "netns", "exec", head, sys.executable, "-m",
                     "apache_beam.runners.portability.local_job_service_main", "--port", "8099"],
                    cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT))
            pool_logs, pools = [], []
            for ns, address in workers:
                pool_logs.append(logs / f"pool-{ns}.log")
                with open(pool_logs[-1], "w") as out:
                    processes.append(subprocess.Popen(
                        ["ip", "netns", "exec", ns, sys.executable, "-m", "runners.worker_pool", "--host", address,
                         "--port", "50000"], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT))
                pools.append(f"{address}:50000")
            _wait_for(job_log, "Listening for beam jobs", processes[0])
            for log, process in zip(pool_logs, processes[1:], strict=True):
                _wait_for(log, "worker pool ready", process)
            (tmp_path / "overlay.yaml").write_text(OVERLAY + f"portable: {{services: external, job_endpoint: "
                                                   f"'localhost:8099', worker_pools: {pools}}}\n")
            command = ["ip", "netns", "exec", head, *runner]
        started = time.monotonic()
        done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
        print(f"portable run: {time.monotonic() - started:.1f} s, pools {pools}\n{done.stdout}")
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
        assert "Result: OK" in done.stdout
        # Every Beam-based component was a job of the job service; each pool started SDK workers for its share.
        jobs = job_log.read_text().count("Running job")
        assert jobs >= 4, job_log.read_text()[-3000:]
        for log in pool_logs:
            assert "Starting worker with command" in log.read_text(), log.read_text()[-3000:]
    assert list((tmp_path / "output" / "serving" / "chicago_taxi").iterdir())  # pushed
