"""`make lineage` (python -m registry.lineage --version V | --span N | --file PATH [--json]), from ML Metadata's
events (pipeline/metadata.py: SQLite or a MySQL server):

--version V  back from the PushedModel whose pushed_version is V: the Pusher, the Evaluator (evaluation, blessing,
             baseline), the Trainer, the Tuner (trials), Transform (the transform graph), the data gate with
             ExampleValidator (anomalies), StatisticsGen and the schema, down to ExampleGen's input files with
             their content digests, recomputed from the files now to say whether they still hold what was read.
--span N     forward from every ExampleGen output of span N to every model trained or evaluated on it, and whether
             it was blessed, pushed and is served: "which served models saw this bad data?".
--file PATH  the same from the ExampleGen executions that read the file.

Exit status: 0, 1 when the version, span or file is not in ML Metadata (or the store cannot be read), 2 for a
usage or configuration error.
"""
import argparse
import fnmatch
import glob
import hashlib
import json
import os
import sys

from registry import graph as g
from registry import model_card
from registry.models import RegistryError, load_config_or_exit, open_graph, serving_states

SCHEMA_VERSION = 1  # of the JSON: bumped when a key changes meaning or goes


class NotFound(LookupError):
    """The version, span or file is not in ML Metadata; the message says what is."""


# --- ExampleGen's input -------------------------------------------------------------------------------------------
def _splits(step: g.Step) -> list[tuple[str, str]]:
    """[(split name, file pattern)] ExampleGen read, with the span filled in ({SPAN}; date and version
    placeholders as wildcards, the span number being what ML Metadata records)."""
    try:
        splits = json.loads(g.prop(step.execution, "input_config") or "{}").get("splits", [])
    except ValueError:
        return []
    span = g.prop(step.execution, "span")
    out = []
    for split in splits:
        pattern = split.get("pattern", "")
        if span is not None:
            pattern = pattern.replace("{SPAN}", str(span))
        for placeholder in ("{SPAN}", "{YYYY}", "{MM}", "{DD}", "{VERSION}"):
            pattern = pattern.replace(placeholder, "*")
        out.append((split.get("name", ""), pattern))
    return out


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def input_files(step: g.Step) -> dict:
    """ExampleGen's input now: each file its patterns match (bytes, SHA-256 of its content), and the digest of
    them all the way CsvExampleGen's driver takes it (pipeline/example_gen_driver.py: each file's
    `<split>/<path under input_base>` and bytes, NUL-separated, in glob order), to compare with the one recorded."""
    from pipeline.spans import example_gen_files

    base = g.prop(step.execution, "input_base") or ""
    files, digest = [], hashlib.sha256()
    for split, pattern in _splits(step):
        folder, name = os.path.split(pattern)
        # The file names as tf.io.gfile.glob matches them (a leading dot too): pipeline/components.py.
        folders = sorted(glob.glob(os.path.join(base, folder))) if folder else [base]
        for path in [p for d in folders if os.path.isdir(d) for p in example_gen_files(d, name)]:
            digest.update(f"{split}/{os.path.relpath(path, base)}".encode() + b"\0")
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
            digest.update(b"\0")
            files.append({"path": path, "bytes": os.path.getsize(path), "sha256": _sha256(path)})
    return {"input_base": base, "patterns": [f"{s}: {p}" for s, p in _splits(step)], "files": files,
            "sha256_now": digest.hexdigest() if files else None}


def reads(step: g.Step, path: str) -> bool:
    """Whether ExampleGen's patterns match the file `path` (one path segment per pattern segment, as a glob)."""
    base = os.path.realpath(g.prop(step.execution, "input_base") or "/nonexistent")
    relative = os.path.relpath(os.path.realpath(path), base)
    if relative.startswith(".."):
        return False
    parts = relative.split(os.sep)
    for _, pattern in _splits(step):
        wanted = pattern.split("/")
        if len(wanted) == len(parts) and all(fnmatch.fnmatchcase(p, w) for p, w in zip(parts, wanted, strict=False)):
            return True
    return False


# --- back from a version ------------------------------------------------------------------------------------------
def _artifact(graph: g.Graph, artifact_id: int) -> dict:
    a = graph.artifacts[artifact_id]
    found = {"id": artifact_id, "type": graph.type_of(artifact_id), "uri": a.uri,
             "state": a.State.Name(a.state), "on_disk": bool(a.uri) and os.path.exists(a.uri)}
    for key in ("span", "version", "pushed_version", "blessed"):
        if (value := g.prop(a, key)) is not None and (key != "span" or found["type"] == "Examples"):
            found[key] = value
    if found["type"] == "Examples":
        found.update(g.input_fingerprint(a))
    return found


def _anomalies(uri: str) -> dict[str, list[str]]:
    """split -> the features ExampleValidator found anomalous (TFDV's Anomalies in Split-<name>/SchemaDiff.pb)."""
    from tensorflow_metadata.proto.v0 import anomalies_pb2

    found = {}
    for path in sorted(glob.glob(os.path.join(uri, "Split-*", "SchemaDiff.pb"))):
        anomalies = anomalies_pb2.Anomalies()
        try:
            with open(path, "rb") as f:
                anomalies.ParseFromString(f.read())
        except (OSError, ValueError):
            continue
        found[os.path.basename(os.path.dirname(path))[len("Split-"):]] = sorted(anomalies.anomaly_info)
    return found


def _details(graph: g.Graph, step: g.Step) -> dict:
    """What a person looks for in each step beyond its artifacts."""
    x = step.execution
    if step.node == g.EXAMPLE_GEN:
        examples = graph.one(step, "examples", outputs=True)
        recorded = g.input_fingerprint(graph.artifacts[examples]) if examples is not None else {}
        now = input_files(step)
        unchanged = (now["sha256_now"] == recorded["sha256"]) if "sha256" in recorded and now["files"] else None
        return {"span": g.prop(x, "span"), **recorded, **now, "files_unchanged": unchanged}
    if step.node == "ImportSchemaGen":
        return {"schema_file": g.prop(x, "schema_file")}
    if step.node == "ExampleValidator":
        anomalies = graph.one(step, "anomalies", outputs=True)
        return {"anomalies": _anomalies(graph.artifacts[anomalies].uri)} if anomalies is not None else {}
    if step.node == g.GATE:
        return {"passed": step.state in ("ran", "cached")}
    if step.node == "Tuner":
        results = graph.one(step, "tuner_results", outputs=True)
        try:
            with open(os.path.join(graph.artifacts[results].uri, "tuner_results.json")) as f:
                trials = json.load(f)
        except (OSError, ValueError, KeyError):
            trials = []
        return {"trials": len(trials), "best_score": max((t.get("score") or 0 for t in trials), default=None),
                "trial_results": trials}
    if step.node == g.TRAINER:
        tuned = g.tuned_values(graph, step)
        return {**g.training_settings(graph, step), "tuned_hyperparameters": (tuned or {}).get("values")}
    if step.node == g.EVALUATOR:
        blessing = graph.one(step, "blessing", outputs=True)
        lower, drop = g.thresholds(step)
        return {"blessed": g.prop(graph.artifacts[blessing], "blessed") == 1 if blessing is not None else None,
                "auc_lower_bound": lower, "auc_max_drop": drop, "baseline": g.baseline_version(graph, step)}
    if step.node == g.PUSHER:
        pushed = graph.one(step, "pushed_model", outputs=True)
        return {"pushed_version": g.prop(graph.artifacts[pushed], "pushed_version"),
                "destination": g.prop(graph.artifacts[pushed], "pushed_destination")} if pushed is not None else {}
    return {}


def _step(graph: g.Graph, step: g.Step) -> dict:
    return {"node": step.node, "execution_id": step.execution.id, "state": step.state, "run": step.run_name,
            "started": g.utc(step.execution.create_time_since_epoch),
            "inputs": {k: [_artifact(graph, a) for a in ids] for k, ids in sorted(step.inputs.items())},
            "outputs": {k: [_artifact(graph, a) for a in ids] for k, ids in sorted(step.outputs.items())},
            "details": _details(graph, step)}


def back(config, graph: g.Graph, version: int) -> dict:
    """The lineage of `version`, oldest step first."""
    pushes = g.pushes(graph)
    if version not in pushes:
        known = ", ".join(map(str, sorted(pushes, reverse=True))) or "none"
        raise NotFound(f"version {version}: no Pusher of pipeline '{config.pipeline_name}' pushed it (versions in ML "
                       f"Metadata: {known})")
    push = pushes[version]
    steps = {s.execution.id: s for s in graph.ancestry(push.pushed)}
    for examples in graph.examples_read(push.pushed):
        steps.update({s.execution.id: s for s in graph.gate_checks(examples, push.pusher.execution.id)})
    reason, spans = g.run_reason(push.pusher.run)
    states, _ = serving_states(config)
    return {"schema_version": SCHEMA_VERSION, "pipeline": config.pipeline_name, "model": config.model_name,
            "version": version, "pushed_at": g.utc(graph.artifacts[push.pushed].create_time_since_epoch),
            "run": push.pusher.run_name, "reason": reason, "run_spans": spans,
            "serving": states.get(version, {"state": "PRUNED", "labels": [], "rolled_back": None}),
            "model_card": model_card.card_path(config, version),
            "steps": [_step(graph, steps[x]) for x in sorted(steps)]}


# --- forward from data --------------------------------------------------------------------------------------------
def forward(config, graph: g.Graph, examples: set[int], what: str) -> dict:
    """Every model trained or evaluated on one of the ExampleGen outputs `examples`, newest first, with its
    blessing, the versions it was pushed as and their serving state."""
    states, _ = serving_states(config)
    pushes = g.pushes(graph)
    models = []
    for model in sorted(graph.models(), reverse=True):
        trained = set(graph.examples_read(model))
        evaluations = graph.evaluations_of(model)
        evaluated = {graph.one(e, "examples") for e in evaluations} - {None}
        if not (trained | evaluated) & examples:
            continue
        blessings = [graph.one(e, "blessing", outputs=True) for e in evaluations]
        versions = sorted({v for v, p in pushes.items() if p.model == model}, reverse=True)
        models.append({
            "model": graph.artifacts[model].uri, "model_id": model,
            "trained_in_run": graph.producer(model).run_name,
            "trained_on": bool(trained & examples), "evaluated_on": bool(evaluated & examples),
            "trained_on_spans": sorted({graph.span(a) for a in trained}),
            "evaluated_on_spans": sorted({graph.span(a) for a in evaluated}),
            "blessed": any(g.prop(graph.artifacts[b], "blessed") == 1 for b in blessings if b is not None),
            "versions": [{"version": v, "serving": states.get(v, {"state": "PRUNED", "labels": [],
                                                                  "rolled_back": None})} for v in versions]})
    ingested = []
    for a in sorted(examples):
        made = graph.producer(a)
        ingested.append({"examples": graph.artifacts[a].uri, "artifact_id": a, "span": graph.span(a),
                         "run": made.run_name if made else None, **g.input_fingerprint(graph.artifacts[a])})
    served = sorted({v["version"] for m in models for v in m["versions"] if v["serving"]["state"] == "AVAILABLE"},
                    reverse=True)
    return {"schema_version": SCHEMA_VERSION, "pipeline": config.pipeline_name, "model": config.model_name,
            "data": what, "ingested": ingested, "models": models, "served_versions": served}


def examples_of_span(graph: g.Graph, span: int) -> set[int]:
    found = {a for step in graph.steps.values() if step.node == g.EXAMPLE_GEN
             for a in step.outputs.get("examples", []) if graph.span(a) == span}
    if not found:
        spans = sorted({graph.span(a) for s in graph.steps.values() if s.node == g.EXAMPLE_GEN
                        for a in s.outputs.get("examples", [])})
        raise NotFound(f"span {span}: ExampleGen never ingested it (spans in ML Metadata: "
                       f"{', '.join(map(str, spans)) or 'none'})")
    return found


def examples_of_file(graph: g.Graph, path: str) -> set[int]:
    found = {a for step in graph.steps.values() if step.node == g.EXAMPLE_GEN and reads(step, path)
             for a in step.outputs.get("examples", [])}
    if not found:
        raise NotFound(f"{path}: no ExampleGen execution read it (its input patterns never matched this path)")
    return found


# --- the terminal -------------------------------------------------------------------------------------------------
def _serving_text(serving: dict) -> str:
    text = " ".join([serving["state"], *serving["labels"]])
    return text + (" ROLLED BACK" if serving.get("rolled_back") else "")


def back_text(lineage: dict) -> str:
    spans = ",".join(map(str, lineage["run_spans"])) or "-"
    lines = [f"Version {lineage['version']} of '{lineage['model']}': pushed {lineage['pushed_at']} by run "
             f"{lineage['run']} (why: {lineage['reason'] or 'not recorded'}; spans {spans}); serving: "
             f"{_serving_text(lineage['serving'])}",
             f"Model card: {lineage['model_card'] or 'none (python -m registry.model_card writes it)'}",
             ""]
    for step in reversed(lineage["steps"]):
        lines.append(f"{step['node']:<32} {step['state']:<7} execution {step['execution_id']:<5} run {step['run']}")
        d = step["details"]
        if step["node"] == g.EXAMPLE_GEN:
            verdict = {True: "files unchanged since", False: "FILES CHANGED since", None: "no content digest to "
                       "compare with"}[d["files_unchanged"]]
            lines.append(f"    input {d['input_base']} ({'; '.join(d['patterns'])}), span {d['span']}: "
                         f"{d.get('csv_rows', '?')} rows, sha256 {d.get('sha256', 'not recorded')}; {verdict} "
                         "ExampleGen read them")
            lines += [f"    file {f['path']}  {f['bytes']} bytes  sha256 {f['sha256']}" for f in d["files"]]
        elif step["node"] == "ExampleValidator":
            found = {s: names for s, names in d.get("anomalies", {}).items() if names}
            lines.append("    anomalies: " + ("; ".join(f"{s}: {', '.join(n)}" for s, n in found.items()) or "none"))
        elif step["node"] == g.GATE:
            lines.append(f"    {'passed' if d['passed'] else 'STOPPED'}")
        elif step["node"] == "Tuner":
            best = f", best score {d['best_score']:.4f}" if d["best_score"] is not None else ""
            lines.append(f"    {d['trials']} trials{best}")
        elif step["node"] == g.TRAINER:
            lines.append("    " + ", ".join(f"{k} {v}" for k, v in d.items() if k != "tuned_hyperparameters")
                         + (f"; tuned: {d['tuned_hyperparameters']}" if d["tuned_hyperparameters"] else ""))
        elif step["node"] == g.EVALUATOR:
            baseline = d["baseline"]
            lines.append(f"    {'BLESSED' if d['blessed'] else 'NOT blessed'}: AUC >= {d['auc_lower_bound']}, drop "
                         f"<= {d['auc_max_drop']} against "
                         + (f"version {','.join(map(str, baseline['versions'])) or baseline['model']}" if baseline
                            else "no baseline (the first blessing)"))
        for key, artifacts in step["outputs"].items():
            for a in artifacts:
                gone = "" if a["on_disk"] else "  (deleted)" if a["state"] == "DELETED" else "  (missing)"
                lines.append(f"    -> {key:<24} {a['uri']}{gone}")
    return "\n".join(lines)


def forward_text(lineage: dict) -> str:
    lines = [f"{lineage['data']}: ingested by ExampleGen {len(lineage['ingested'])} time"
             f"{'' if len(lineage['ingested']) == 1 else 's'}:"]
    lines += [f"    run {i['run']}: span {i['span']}, {i.get('csv_rows', '?')} rows, sha256 "
              f"{i.get('sha256', 'not recorded')}  ({i['examples']})" for i in lineage["ingested"]]
    rows = [("MODEL (TRAINED IN RUN)", "SAW IT", "TRAINED ON", "EVALUATED ON", "BLESSED", "VERSIONS (SERVING)")]
    for m in lineage["models"]:
        saw = "+".join(w for w, on in (("trained", m["trained_on"]), ("evaluated", m["evaluated_on"])) if on)
        versions = ", ".join(f"{v['version']} ({_serving_text(v['serving'])})" for v in m["versions"]) or "not pushed"
        rows.append((m["trained_in_run"] or str(m["model_id"]), saw, ",".join(map(str, m["trained_on_spans"])),
                     ",".join(map(str, m["evaluated_on_spans"])), "yes" if m["blessed"] else "no", versions))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines += ["", *("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)).rstrip() for r in rows), ""]
    served = lineage["served_versions"]
    lines.append(f"Served now (AVAILABLE) and saw it: version{'s' if len(served) > 1 else ''} "
                 f"{', '.join(map(str, served))}" if served else "No version that saw it is served now.")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m registry.lineage", description=(
        "Lineage from ML Metadata: back from a pushed version to its input files, or forward from a span or a "
        "file to every model trained or evaluated on it."))
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--version", type=int, help="a pushed version (its folder name under the serving base path)")
    which.add_argument("--span", type=int, help="a span number (span-N/ folder; 0 for a flat data root)")
    which.add_argument("--file", help="a data file ExampleGen read")
    parser.add_argument("--json", action="store_true", help="as JSON (docs/registry.md)")
    args = parser.parse_args(argv)
    config = load_config_or_exit()
    try:
        graph = open_graph(config)
        if graph is None:
            raise NotFound(f"no ML Metadata yet ({config.metadata_path}): no run has finished")
        if args.version is not None:
            result, text = back(config, graph, args.version), back_text
        elif args.span is not None:
            result, text = forward(config, graph, examples_of_span(graph, args.span), f"Span {args.span}"), forward_text
        else:
            path = os.path.abspath(args.file)
            result, text = forward(config, graph, examples_of_file(graph, path), f"File {path}"), forward_text
    except (NotFound, RegistryError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2, sort_keys=True) if args.json else text(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
