"""The console's HTTP server: server-side rendered pages (jinja2, autoescaped) over console/data.py. GET and HEAD
only (anything else 405), no request body, bounded request lines and headers (http.server's) and a socket timeout;
a run, version or file it does not have is a 404 naming what it has; files only from under the output root.

Every page carries a Content-Security-Policy that lets it load nothing but itself: no script, no font, no image
from anywhere else (charts and graphs are inline SVG)."""
import logging
import mimetypes
import os
import re
import time
import traceback
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import quote, unquote, urlsplit

import jinja2

from console import charts, data, svg
from pipeline.config import Config
from registry import graph as g

log = logging.getLogger("console")
MAX_URL = 2048                  # characters of a request's target
TIMEOUT_SECONDS = 30            # a client that sends nothing for this long is dropped
# The model card is a page of its own, framed (sandboxed: no script) on its version's page.
PAGE_CSP = ("default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; frame-src 'self'; base-uri 'none'; "
            "form-action 'none'")
# Files (reports) may carry their own inline styles and scripts; still nothing from elsewhere.
FILE_CSP = "default-src 'self' 'unsafe-inline' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'self'"
VERSION = re.compile(r"\d{1,20}")
TEMPLATES = jinja2.Environment(loader=jinja2.PackageLoader("console", "templates"),
                               autoescape=jinja2.select_autoescape(default=True), undefined=jinja2.StrictUndefined)


class HttpError(Exception):
    def __init__(self, status: HTTPStatus, message: str):
        super().__init__(message)
        self.status = status


def _utc(ms: int | float | None) -> str:
    return g.utc(ms) if ms else "-"


def _seconds(value: float) -> str:
    return f"{value:.1f} s" if value < 120 else f"{value / 60:.1f} min"


TEMPLATES.filters.update(utc=_utc, seconds=_seconds, quote=lambda s: quote(str(s), safe=""),
                         number=lambda v: "-" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v))


class Console:
    """Renders each page from the configuration's output root and ML Metadata, read again for every request (what a
    running pipeline commits shows at the next reload)."""

    def __init__(self, config: Config):
        self.config = config

    # --- routing -------------------------------------------------------------------------------------------------
    def respond(self, target: str) -> tuple[HTTPStatus, str, bytes, str]:
        """(status, content type, body, CSP) for a GET of `target`."""
        path = urlsplit(target).path
        parts = [unquote(p) for p in path.split("/")[1:]] or [""]  # "//x" parses as a host: no path
        try:
            if path == "/":
                return self._page("overview.html", **self.overview())
            if parts[0] == "runs" and len(parts) == 2 and parts[1]:
                return self._page("run.html", **self.run(parts[1]))
            if path == "/models":
                return self._page("models.html", **self.models())
            if parts[0] == "models" and len(parts) == 2:
                return self._page("version.html", **self.version(parts[1]))
            if path == "/serving":
                return self._page("serving.html", **self.serving())
            if path == "/monitoring":
                return self._page("monitoring.html", **self.monitoring())
            if parts[0] == "files" and len(parts) > 1:
                return self.file("/".join(parts[1:]))
            raise HttpError(HTTPStatus.NOT_FOUND, f"{path}: no such page (pages: /, /runs/<run>, /models, "
                            "/models/<version>, /serving, /monitoring, /files/<path under the output root>)")
        except data.NotFound as e:
            return self._error(HTTPStatus.NOT_FOUND, str(e))
        except HttpError as e:
            return self._error(e.status, str(e))
        except Exception as e:  # noqa: BLE001 - a store that cannot be read, a bug: the page says so, the server stays
            log.error("GET %s failed:\n%s", path, traceback.format_exc())
            from pipeline.metadata import MetadataError
            from registry.models import RegistryError
            if isinstance(e, MetadataError | RegistryError):
                return self._error(HTTPStatus.SERVICE_UNAVAILABLE, str(e))
            return self._error(HTTPStatus.INTERNAL_SERVER_ERROR, f"{type(e).__name__}: {e}")

    def _page(self, template: str, **values) -> tuple[HTTPStatus, str, bytes, str]:
        body = TEMPLATES.get_template(template).render(config=self.config, **values)
        return HTTPStatus.OK, "text/html; charset=utf-8", body.encode(), PAGE_CSP

    def _error(self, status: HTTPStatus, message: str) -> tuple[HTTPStatus, str, bytes, str]:
        body = TEMPLATES.get_template("error.html").render(config=self.config, status=status, message=message)
        return status, "text/html; charset=utf-8", body.encode(), PAGE_CSP

    # --- pages ---------------------------------------------------------------------------------------------------
    def overview(self) -> dict:
        graphs = data.experiments(self.config)
        runs = {name: data.runs(graph) for name, graph in graphs.items()}
        evaluations = [e for graph in graphs.values() for e in data.evaluations(graph)]
        by_run = {(e["experiment"], e["run"]): e for e in evaluations}
        chart_list = [(m, charts.metric_over_time(evaluations, m, data.BLESSING_METRIC)) for m in data.CHARTED_METRICS]
        return {"experiments": runs, "by_run": by_run, "threshold_metric": data.BLESSING_METRIC,
                "charts": [(m, c) for m, c in chart_list if c], "reasons": {
                    (name, r.name): g.run_reason(r.steps[0].run) for name, rs in runs.items() for r in rs}}

    def run(self, name: str) -> dict:
        graph, run = data.find_run(data.experiments(self.config), name)
        steps, edges = data.dag(graph, run)
        nodes = [svg.Node(str(s.execution.id), s.node, f"{s.state} {_seconds(data.duration(s))}", s.state,
                          f"#execution-{s.execution.id}") for s in steps]
        dag = svg.render(nodes, [(str(a), str(b)) for a, b in edges], f"pipeline run {run.name}")
        artifacts = {s.execution.id: {key: [self._artifact(graph, a) for a in ids] for key, ids in
                                      sorted(s.outputs.items())} for s in steps}
        evaluation = next((e for e in data.evaluations(graph) if e["run"] == run.name), None)
        return {"run": run, "steps": steps, "dag": dag, "artifacts": artifacts, "duration": data.duration,
                "reason": g.run_reason(run.steps[0].run), "evaluation": evaluation,
                "reports": data.report_files(self.config, graph.pipeline_name, run.name)}

    def _artifact(self, graph: g.Graph, artifact_id: int) -> dict:
        a = graph.artifacts[artifact_id]
        link = data.readable_file(self.config.output_root, a.uri)
        return {"id": artifact_id, "type": graph.type_of(artifact_id), "uri": a.uri, "state": a.State.Name(a.state),
                "on_disk": bool(a.uri) and os.path.exists(a.uri), "link": link,
                "version": g.prop(a, "pushed_version"), "span": g.prop(a, "span")}

    def models(self) -> dict:
        from registry.models import open_graph, versions

        return {"registry": versions(self.config, open_graph(self.config))}

    def version(self, text: str) -> dict:
        from registry import lineage
        from registry.models import open_graph, versions

        if not VERSION.fullmatch(text):
            raise data.NotFound(f"version {text!r}: a version is a number (the pushed model's folder name)")
        graph = open_graph(self.config)
        registry = versions(self.config, graph)
        row = next((r for r in registry["versions"] if r["version"] == int(text)), None)
        if row is None:
            known = ", ".join(str(r["version"]) for r in registry["versions"]) or "none"
            raise data.NotFound(f"version {text}: not pushed by pipeline '{self.config.pipeline_name}' and not "
                                f"under {self.config.serving_model_dir} (versions: {known})")
        try:
            back = lineage.back(self.config, graph, int(text)) if graph is not None else None
        except lineage.NotFound:
            back = None  # a version folder no Pusher recorded: no lineage to draw
        return {"row": row, "lineage": back, "lineage_svg": self._lineage_svg(back) if back else "",
                "card": self.card(int(text))}

    def _lineage_svg(self, back: dict) -> str:
        """Executions and their artifacts as one graph: artifact -> execution for an input, execution -> artifact
        for an output (ML Metadata's events)."""
        nodes, edges, seen = [], [], set()
        for step in back["steps"]:
            key = f"x{step['execution_id']}"
            nodes.append(svg.Node(key, step["node"], f"execution {step['execution_id']}", step["state"]))
            for direction in ("inputs", "outputs"):
                for artifacts in step[direction].values():
                    for a in artifacts:
                        akey = f"a{a['id']}"
                        if akey not in seen:
                            seen.add(akey)
                            label = (f"version {a['pushed_version']}" if "pushed_version" in a else
                                     f"span {a['span']}" if "span" in a else f"artifact {a['id']}")
                            link = data.readable_file(self.config.output_root, a["uri"]) if a["on_disk"] else None
                            nodes.append(svg.Node(akey, a["type"], label if a["state"] == "LIVE" else
                                                  f"{label} {a['state']}", "artifact" if a["on_disk"] else "deleted",
                                                  f"/files/{quote(link)}" if link else None))
                        edges.append((akey, key) if direction == "inputs" else (key, akey))
        return svg.render(nodes, edges, f"lineage of version {back['version']}")

    def card(self, version: int) -> dict[str, str]:
        """The version's model card files (registry/model_card.py) by kind, relative to the output root."""
        from registry import model_card

        found = {kind: data.relative(self.config.output_root, model_card.card_path(self.config, version, kind))
                 for kind in model_card.FILES}
        return {kind: path for kind, path in found.items() if path}

    def serving(self) -> dict:
        from registry.models import serving_states

        states, notes = serving_states(self.config)
        return {"states": dict(sorted(states.items(), reverse=True)), "notes": notes,
                "rollout": data.rollout(self.config)}

    def monitoring(self) -> dict:
        windows = data.monitoring_windows(self.config)
        return {"windows": windows[::-1], "chart": charts.monitoring_over_time(windows)}

    def file(self, relative: str) -> tuple[HTTPStatus, str, bytes, str]:
        path = data.safe_path(self.config.output_root, relative)
        kind = mimetypes.guess_type(path)[0] or "application/octet-stream"
        if kind.startswith("text/") or kind in ("application/json", "image/svg+xml"):
            kind += "; charset=utf-8"
        with open(path, "rb") as f:
            return HTTPStatus.OK, kind, f.read(), FILE_CSP


class Handler(BaseHTTPRequestHandler):
    server_version = "tfx-e2e-console"
    timeout = TIMEOUT_SECONDS
    protocol_version = "HTTP/1.1"
    console: Console  # set on the subclass make_server builds

    def _send(self, status: HTTPStatus, kind: str, body: bytes, csp: str, head: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Content-Security-Policy", csp)
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("Cache-Control", "no-store")
        if status == HTTPStatus.METHOD_NOT_ALLOWED:
            self.send_header("Allow", "GET, HEAD")
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _refused(self, status: HTTPStatus, message: str) -> None:
        status, kind, body, csp = self.console._error(status, message)
        self.close_connection = True
        self._send(status, kind, body, csp)

    def _get(self, head: bool) -> None:
        if len(self.path) > MAX_URL:
            return self._refused(HTTPStatus.REQUEST_URI_TOO_LONG, f"a request target of at most {MAX_URL} characters")
        if self.headers.get("Content-Length", "0") != "0" or self.headers.get("Transfer-Encoding"):
            return self._refused(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "the console reads no request body")
        started = time.monotonic()
        status, kind, body, csp = self.console.respond(self.path)
        self._send(status, kind, body, csp, head)
        log.info("%s %s %d %.0f ms", self.command, self.path, status, (time.monotonic() - started) * 1000)

    def do_GET(self):
        self._get(head=False)

    def do_HEAD(self):
        self._get(head=True)

    def _not_allowed(self):
        self._refused(HTTPStatus.METHOD_NOT_ALLOWED, f"{self.command}: the console is read-only (GET and HEAD only)")

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_TRACE = do_CONNECT = _not_allowed

    def log_message(self, format, *args):  # noqa: A002 - http.server's signature; its access log goes to logging
        log.debug(format, *args)


def make_server(config: Config, host: str | None = None, port: int | None = None) -> ThreadingHTTPServer:
    """The server bound to host:port (the configuration's console.host and console.port unless given)."""
    handler = type("ConsoleHandler", (Handler,), {"console": Console(config)})
    server = ThreadingHTTPServer((host or config.console.host, config.console.port if port is None else port),
                                 handler)
    server.daemon_threads = True
    return server
