"""make console (console/): unit tests of the server on a hand-made ML Metadata store (a run of three components,
one failed), and an e2e test with Debian's Chromium (Playwright) over the small pipeline's outputs: every page
renders with no console error and no request beyond the console, the DAG shows the run's real components, every
link resolves. Its screenshots are docs/images/console-*.png."""
import http.client
import os
import re
import threading
from pathlib import Path
from urllib.parse import quote

import pytest

from pipeline.config import load_config

CHROMIUM = "/usr/bin/chromium"
PIPELINE = "chicago-taxi"


def _context(store, type_name: str, name: str, type_ids: dict):
    from ml_metadata.proto import metadata_store_pb2 as pb

    if type_name not in type_ids:
        type_ids[type_name] = store.put_context_type(pb.ContextType(name=type_name))
    return store.get_contexts_by_id(store.put_contexts([pb.Context(type_id=type_ids[type_name], name=name)]))[0]


def write_store(output_root: Path, run: str = "run-1") -> None:
    """ML Metadata as TFX's LocalDagRunner files a run, by hand: ExampleGen -> StatisticsGen -> SchemaGen (FAILED),
    each execution in its node and run contexts, the artifacts linked by events."""
    import ml_metadata as mlmd
    from ml_metadata.proto import metadata_store_pb2 as pb

    path = output_root / "metadata" / PIPELINE / "metadata.db"
    path.parent.mkdir(parents=True)
    connection = pb.ConnectionConfig()
    connection.sqlite.filename_uri = str(path)
    store = mlmd.MetadataStore(connection)
    contexts: dict = {}
    pipeline = _context(store, "pipeline", PIPELINE, contexts)
    run_context = _context(store, "pipeline_run", run, contexts)
    artifact_type = store.put_artifact_type(pb.ArtifactType(name="Examples"))
    uri = output_root / "pipelines" / PIPELINE / "ExampleGen" / "examples" / "1"
    uri.mkdir(parents=True)
    (uri / "notes.txt").write_text("examples")
    previous = None
    for node, state in (("ExampleGen", pb.Execution.COMPLETE), ("StatisticsGen", pb.Execution.COMPLETE),
                        ("SchemaGen", pb.Execution.FAILED)):
        node_context = _context(store, "node", f"{PIPELINE}.{node}", contexts)
        type_id = store.put_execution_type(pb.ExecutionType(name=node))
        output = pb.Artifact(type_id=artifact_type, uri=str(uri), state=pb.Artifact.LIVE)
        events = []
        if previous is not None:
            events.append((store.get_artifacts_by_id([previous])[0], pb.Event(type=pb.Event.INPUT,
                                                              path=pb.Event.Path(steps=[{"key": "examples"}]))))
        if state == pb.Execution.COMPLETE:
            events.append((output, pb.Event(type=pb.Event.OUTPUT, path=pb.Event.Path(steps=[{"key": "out"}]))))
        _, artifacts, _ = store.put_execution(
            pb.Execution(type_id=type_id, last_known_state=state), events,
            [pipeline, run_context, node_context])
        previous = artifacts[-1] if state == pb.Execution.COMPLETE else previous


@pytest.fixture
def console(tmp_path):
    """A console server on a free port over tmp_path/output (the hand-made store written by the test when it
    wants one); yields (config, port)."""
    from console.server import make_server

    config = load_config(env={"TFX_E2E_OUTPUT_ROOT": str(tmp_path / "output")}, check_data=False)
    server = make_server(config, port=0)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield config, server.server_address[1]
    server.shutdown()
    server.server_close()


def request(port: int, method: str, path: str, body: bytes | None = None, headers=None):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    connection.request(method, path, body=body, headers=headers or {})
    response = connection.getresponse()
    text = response.read().decode()
    connection.close()
    return response, text


def test_console_binds_loopback_on_the_configured_port_by_default():
    from console.server import make_server

    config = load_config(check_data=False)
    assert (config.console.host, config.console.port) == ("127.0.0.1", 8600)
    server = make_server(config, port=0)
    try:
        assert server.server_address[0] == "127.0.0.1"
    finally:
        server.server_close()


def test_pages_of_a_hand_made_run_and_its_dag(console):
    config, port = console
    write_store(Path(config.output_root))
    response, text = request(port, "GET", "/")
    assert response.status == 200 and 'href="/runs/run-1"' in text and "FAILED" in text
    assert "default-src 'none'" in response.headers["Content-Security-Policy"]
    response, text = request(port, "GET", "/runs/run-1")
    assert response.status == 200
    for node, kind in (("ExampleGen", "ran"), ("StatisticsGen", "ran"), ("SchemaGen", "FAILED")):
        assert f'data-node="{node}" data-kind="{kind}"' in text
    assert text.count('class="edge"') == 2  # ExampleGen -> StatisticsGen -> SchemaGen, from the events
    # The artifact's folder links its readable file, under the output root.
    assert 'href="/files/pipelines/chicago-taxi/ExampleGen/examples/1/notes.txt"' in text
    response, text = request(port, "GET", "/files/pipelines/chicago-taxi/ExampleGen/examples/1/notes.txt")
    assert (response.status, text, response.headers["Content-Type"]) == (200, "examples", "text/plain; charset=utf-8")
    response, text = request(port, "HEAD", "/runs/run-1")
    assert response.status == 200 and text == "" and int(response.headers["Content-Length"]) > 0


def _add_run(output_root: Path, run: str) -> None:
    """A later run in write_store's store: one ExampleGen execution in its own `pipeline_run` context."""
    import ml_metadata as mlmd
    from ml_metadata.proto import metadata_store_pb2 as pb

    connection = pb.ConnectionConfig()
    connection.sqlite.filename_uri = str(output_root / "metadata" / PIPELINE / "metadata.db")
    store = mlmd.MetadataStore(connection)
    [run_context] = store.get_contexts_by_id(store.put_contexts([pb.Context(
        type_id=store.get_context_type("pipeline_run").id, name=run)]))
    store.put_execution(pb.Execution(type_id=store.get_execution_type("ExampleGen").id,
                                     last_known_state=pb.Execution.COMPLETE), [],
                        [store.get_context_by_type_and_name("pipeline", PIPELINE), run_context,
                         store.get_context_by_type_and_name("node", f"{PIPELINE}.ExampleGen")])


def test_a_run_page_links_its_own_reports(console):
    """Two runs, each with its report folder (runners/summary.py), the pipeline's folder holding the newest's copies;
    a third run that wrote none (a run from before per-run folders)."""
    from reports import run_report_dir

    config, port = console
    root = Path(config.output_root)
    older, newer = "2026-11-23T09:00:00.000001-aaaa0001", "2026-11-30T09:00:00.000001-bbbb0002"
    write_store(root, run=older)
    for run in (newer, "run-3"):
        _add_run(root, run)
    for run, files in ((older, ("statistics.html", "evaluation.html")), (newer, ("statistics.html",))):
        folder = Path(run_report_dir(config.output_root, PIPELINE, run))
        folder.mkdir(parents=True)
        for name in files:
            (folder / name).write_text(f"{name} of {run}")
            (root / "reports" / PIPELINE / name).write_text(f"{name} of {run}")
    response, text = request(port, "GET", "/runs/" + quote(older, safe=""))
    assert response.status == 200 and "each run replaces them" not in text
    links = re.findall(r'href="(/files/reports/[^"]*)"', text)
    assert links == [f"/files/reports/{PIPELINE}/runs/{quote(older)}/{name}" for name in ("evaluation.html",
                                                                                          "statistics.html")]
    for link, name in zip(links, ("evaluation.html", "statistics.html"), strict=True):
        assert request(port, "GET", link)[1] == f"{name} of {older}"
    response, text = request(port, "GET", "/runs/" + quote(newer, safe=""))
    assert re.findall(r'href="(/files/reports/[^"]*)"', text) == [
        f"/files/reports/{PIPELINE}/runs/{quote(newer)}/statistics.html"]
    response, text = request(port, "GET", "/runs/run-3")
    assert re.findall(r'href="/files/reports/', text) == [] and "<h2>Reports</h2>" in text
    assert re.search(r"<h2>Reports</h2>.*<ul><li>none</li></ul>", text, re.DOTALL)


def test_a_run_or_version_it_does_not_have_is_a_404_naming_what_it_has(console):
    config, port = console
    write_store(Path(config.output_root))
    response, text = request(port, "GET", "/runs/run-9")
    assert response.status == 404 and "run &#39;run-9&#39; is not in ML Metadata (runs: run-1)" in text
    response, text = request(port, "GET", "/models/abc")
    assert response.status == 404 and "a version is a number" in text
    response, text = request(port, "GET", "/models/123")
    assert response.status == 404 and "version 123: not pushed" in text and "(versions: none)" in text
    for page in ("/nowhere", "//nowhere", "/runs/"):
        response, text = request(port, "GET", page)
        assert response.status == 404 and "no such page" in text, page


def test_no_store_yet_says_so(console):
    _, port = console
    response, text = request(port, "GET", "/")
    assert response.status == 200 and "No runs yet" in text
    for page in ("/models", "/serving", "/monitoring"):
        assert request(port, "GET", page)[0].status == 200, page


def test_a_store_that_cannot_be_read_is_a_503_naming_it(console):
    config, port = console
    Path(config.metadata_path).parent.mkdir(parents=True)
    Path(config.metadata_path).write_text("not a database")
    for page in ("/", "/models"):
        response, text = request(port, "GET", page)
        assert response.status == 503 and f"cannot open the SQLite file {config.metadata_path}" in text, page


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"])
def test_only_get_and_head(console, method):
    _, port = console
    response, text = request(port, method, "/", body=b"x" if method != "OPTIONS" else None)
    assert response.status == 405 and response.headers["Allow"] == "GET, HEAD" and "read-only" in text


def test_a_request_body_or_a_huge_target_is_refused(console):
    _, port = console
    response, text = request(port, "GET", "/", body=b"12345")
    assert response.status == 413 and "no request body" in text
    assert request(port, "GET", "/" + "a" * 3000)[0].status == 414


@pytest.mark.parametrize("path", ["/files/../overlay.yaml", "/files/%2e%2e/overlay.yaml", "/files//etc/passwd",
                                  "/files/%2Fetc%2Fpasswd", "/files/outside", "/files/metadata"])
def test_files_only_from_under_the_output_root(console, path):
    config, port = console
    root = Path(config.output_root)
    (root / "metadata").mkdir(parents=True)
    (root.parent / "overlay.yaml").write_text("secret: 1")
    os.symlink(root.parent / "overlay.yaml", root / "outside")  # a link out of the root is refused too
    response, text = request(port, "GET", path)
    assert response.status == 404 and "no such file under the output root" in text and "secret" not in text


def test_names_from_the_store_are_escaped(console):
    config, port = console
    write_store(Path(config.output_root), run="<script>alert(1)</script>")
    for path in ("/", "/runs/" + quote("<script>alert(1)</script>", safe="")):
        response, text = request(port, "GET", path)
        assert response.status == 200 and "<script>" not in text and "&lt;script&gt;alert(1)&lt;/script&gt;" in text


def test_a_port_in_use_is_exit_2(tmp_path, capsys, monkeypatch):
    import socket

    from console.__main__ import main

    monkeypatch.setenv("TFX_E2E_OUTPUT_ROOT", str(tmp_path))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        assert main(["--port", str(taken.getsockname()[1])]) == 2
    assert "error: console: cannot listen on 127.0.0.1:" in capsys.readouterr().err


COMPONENTS = {"ExampleGen", "StatisticsGen", "ImportSchemaGen", "ExampleValidator", "DataGate", "Transform", "Tuner",
              "Trainer", "Evaluator", "Pusher"}


@pytest.mark.e2e
def test_console_in_chromium_over_a_real_run(small_pipeline, tmp_path):
    """Debian's Chromium (Playwright) over the session run's outputs: every console page it links renders with no
    console error and loads nothing but the console; the run's DAG shows its components as ML Metadata recorded
    them; the version page frames its model card; every link on every page resolves. Screenshots in tmp_path."""
    from playwright.sync_api import sync_playwright

    from console import data
    from console.server import make_server
    from pipeline.evaluation import THRESHOLD_METRIC
    from registry import graph as g
    from registry.models import open_graph

    assert small_pipeline.first_exit_code == 0
    assert data.BLESSING_METRIC == THRESHOLD_METRIC
    config = small_pipeline.config()
    graph = open_graph(config)
    version, push = min(g.pushes(graph).items())   # the session run's push (later tests may run again)
    run = push.pusher.run_name
    recorded = {s.node for s in data.find_run({config.pipeline_name: graph}, run)[1].steps}
    assert COMPONENTS <= recorded

    server = make_server(config, port=0)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    outside, errors, checked = [], [], {}
    playwright = sync_playwright().start()
    try:
        browser = playwright.chromium.launch(executable_path=CHROMIUM)
        page = browser.new_page(viewport={"width": 1300, "height": 900})

        def route(r):
            if r.request.url.startswith(base + "/"):
                r.continue_()
            else:
                outside.append(r.request.url)
                r.abort()

        page.route("**/*", route)
        page.on("console", lambda m: errors.append(f"{page.url}: {m.text}") if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(f"{page.url}: {e}"))
        shots = {"overview": "/", "run": f"/runs/{quote(run, safe='')}", "models": "/models",
                 "version": f"/models/{version}", "serving": "/serving", "monitoring": "/monitoring"}
        todo, visited = list(shots.values()), set()
        while todo:
            path = todo.pop(0)
            if path in visited:
                continue
            visited.add(path)
            response = page.goto(base + path)
            assert response.status == 200, (path, response.status)
            name = next((n for n, p in shots.items() if p == path), None)
            if name == "run":
                nodes = page.locator("#dag g.node")
                assert {nodes.nth(i).get_attribute("data-node") for i in range(nodes.count())} == recorded
                assert page.locator('#dag g.node[data-node="Pusher"]').get_attribute("data-kind") == "ran"
                assert page.locator("#dag path.edge").count() >= len(COMPONENTS) - 1
                # The reports of this run (the session's first), from its own folder, whatever ran after it.
                own = f"/files/reports/{config.pipeline_name}/runs/{quote(run)}/"
                assert page.eval_on_selector_all("a[href^='/files/reports/']", "els => els.map(e => "
                                                 "e.getAttribute('href'))") == [own + "evaluation.html",
                                                                                own + "statistics.html"]
            if name == "version":
                card = page.frame_locator("#card iframe").locator("h1")
                assert f"version {version}" in card.inner_text()
                assert page.locator("#lineage g.node").count() > len(COMPONENTS)
            if name:
                page.screenshot(path=tmp_path / f"console-{name}.png", full_page=True)
            links = page.eval_on_selector_all(
                "a[href]", "els => els.map(e => new URL(e.getAttribute('href'), location.href).href)")
            for link in links:
                target, _, fragment = link.partition("#")
                assert target.startswith(base + "/"), (path, link)
                if fragment and target == page.url.partition("#")[0]:
                    assert page.locator(f"[id='{fragment}']").count() == 1, (path, link)
                elif target not in checked:
                    checked[target] = page.request.get(target).status
                    if not target.startswith(base + "/files/"):
                        todo.append(target[len(base):])
        browser.close()
    finally:
        playwright.stop()
        server.shutdown()
        server.server_close()
    assert outside == [] and errors == []
    assert {link: status for link, status in checked.items() if status >= 400} == {}
    assert any("/files/model_cards/" in link for link in checked) and any("/files/reports/" in link for link in checked)


def _window(start: str, seconds: int, status: str, skew: float) -> dict:
    finding = {"check": "skew", "feature": "fare", "measure": "jensen_shannon_divergence", "value": skew,
               "threshold": 0.3, "alert": skew > 0.3}
    return {"model": "chicago_taxi", "window": {"start": start, "end": "-", "start_seconds": seconds, "minutes": 60},
            "status": status, "requests": 1500, "versions": {"1796009471": {"requests": 1500, "skew": [finding],
                                                                            "score": []}},
            "drift": {"findings": [dict(finding, check="drift", value=skew / 2)]},
            "alerts": ["skew: fare jensen_shannon_divergence 0.53 > 0.3"] if skew > 0.3 else []}


def test_serving_and_monitoring_pages_show_the_record_decisions_and_windows(console):
    import json

    config, port = console
    base = Path(config.serving_model_dir)
    base.mkdir(parents=True)
    (base / "rollout.json").write_text(json.dumps({"stable": 1796009180, "rejected": {
        "1796009188": {"time": "2026-11-30T03:26:32+00:00", "reason": "canary error rate 0.4620 (limit 0.0100)"}}}))
    (base / "rollout-audit.jsonl").write_text(
        json.dumps({"time": "2026-11-30T03:26:26+00:00", "decision": "promote", "stable": 1796009180, "canary": None,
                    "step": 3, "percent": 100, "reason": "version 1796009180 is stable"}) + "\n{half-written\n")
    response, text = request(port, "GET", "/serving")
    assert response.status == 200
    assert "promote" in text and "version 1796009180 is stable" in text and "canary error rate 0.4620" in text
    reports = Path(config.output_root) / "monitoring" / "chicago_taxi"
    reports.mkdir(parents=True)
    for window in (_window("2026-09-21T14:00Z", 1790000000, "OK", 0.1),
                   _window("2026-09-21T15:00Z", 1790003600, "ALERT", 0.53)):
        name = "window-" + window["window"]["start"].replace(":", "")
        (reports / f"{name}.json").write_text(json.dumps(window))
        (reports / f"{name}.html").write_text("<p>charts</p>")
    response, text = request(port, "GET", "/monitoring")
    assert response.status == 200 and "2 windows" in text and "<svg" in text and 'class="ALERT"' in text
    assert 'href="/files/monitoring/chicago_taxi/window-2026-09-21T1500Z.html"' in text
    assert text.index("2026-09-21T15:00Z to") < text.index("2026-09-21T14:00Z to")  # newest first
