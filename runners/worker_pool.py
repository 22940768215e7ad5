"""A Beam SDK worker pool (environment EXTERNAL) on the address it is given.

    python -m runners.worker_pool --host 127.0.0.1 --port 50001

Beam's own `python -m apache_beam.runners.worker.worker_pool_main --service_port P` serves the same servicer
(BeamFnExternalWorkerPoolServicer: a StartWorker request starts an SDK worker process connecting back to the
caller's control endpoint) but binds every interface ([::]:P). A pool runs whatever pickled code a caller sends, so
this one binds only `--host`: loopback on one machine, the node's own address in a cluster or a network namespace.
Its workers are `python -c ...` from PATH (Beam's command), so this interpreter's directory goes first on PATH:
they run in this virtual environment and import modules/ and pipeline/ as the job service's side does.
"""
import argparse
import atexit
import logging
import os
import signal
import sys
import threading


def serve(host: str, port: int) -> None:
    import grpc
    from apache_beam.portability.api import beam_fn_api_pb2_grpc
    from apache_beam.runners.worker.worker_pool_main import BeamFnExternalWorkerPoolServicer, kill_process_gracefully
    from apache_beam.utils import thread_pool_executor

    os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")
    pool = BeamFnExternalWorkerPoolServicer(use_process=True)
    # Beam's start() options: a job's control stream may stay idle for a long time.
    server = grpc.server(thread_pool_executor.shared_unbounded_instance(),
                         options=[("grpc.http2.max_pings_without_data", 0), ("grpc.http2.max_ping_strikes", 0)])
    beam_fn_api_pb2_grpc.add_BeamFnExternalWorkerPoolServicer_to_server(pool, server)
    if not server.add_insecure_port(f"{host}:{port}"):
        sys.exit(f"error: worker pool: cannot listen on {host}:{port}")
    atexit.register(lambda: [kill_process_gracefully(p) for p in list(pool._worker_processes.values())])
    server.start()
    logging.info("Worker pool listening on %s:%d (workers: %s)", host, port, sys.executable)
    print(f"worker pool ready on {host}:{port}", flush=True)
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    stopped.wait()
    server.stop(5)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1", help="the address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, required=True, help="the port to listen on")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    serve(args.host, args.port)
    sys.exit(0)  # atexit stops the workers still running


if __name__ == "__main__":
    main()
