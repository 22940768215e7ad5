"""python -m console [--host H] [--port P]: serves the console until interrupted (exit 2 on a configuration error or
a port that cannot be bound)."""
import argparse
import logging
import sys

from registry.models import load_config_or_exit


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m console", description=(
        "A read-only web page over the pipeline's runs, models, lineage, serving and monitoring (docs/console.md)."))
    parser.add_argument("--host", help="the address to bind (default: console.host, 127.0.0.1)")
    parser.add_argument("--port", type=int, help="the port (default: console.port)")
    args = parser.parse_args(argv)
    config = load_config_or_exit()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    from console.server import make_server

    try:
        server = make_server(config, args.host, args.port)
    except OSError as e:
        print(f"error: console: cannot listen on {args.host or config.console.host}:"
              f"{config.console.port if args.port is None else args.port}: {e.strerror or e}", file=sys.stderr)
        return 2
    host, port = server.server_address[:2]
    print(f"Console (read-only) on http://{host}:{port}/ for pipeline '{config.pipeline_name}', output "
          f"{config.output_root}; Ctrl-C stops it", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
