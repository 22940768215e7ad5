"""cloudbuild.yaml: it parses, its steps run in the documented order, every step calls a command or script
that exists here, every substitution it uses is declared, it holds no secret; and the steps that run our
scripts work here with Cloud Build's values (GCP itself cannot be reached: nothing is uploaded or run)."""
import json
import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from pipeline.config import load_config
from runners import kubeflow_v2_runner

REPO = Path(__file__).resolve().parent.parent
BUILD = yaml.safe_load((REPO / "cloudbuild.yaml").read_text())
STEPS = {step["id"]: step for step in BUILD["steps"]}
# What Cloud Build itself provides (https://cloud.google.com/build/docs/configuring-builds/substitute-variable-values).
BUILT_IN = {"PROJECT_ID", "PROJECT_NUMBER", "LOCATION", "BUILD_ID", "COMMIT_SHA", "SHORT_SHA", "BRANCH_NAME",
            "TAG_NAME", "REPO_NAME", "REVISION_ID", "TRIGGER_NAME", "SERVICE_ACCOUNT_EMAIL"}
# Builder images and the commands they provide.
BUILDER_COMMANDS = {"gcr.io/cloud-builders/docker": "docker", "gcr.io/google.com/cloudsdktool/cloud-sdk:slim": "gcloud"}
TEST_VALUES = {"PROJECT_ID": "tfx-e2e-test", "COMMIT_SHA": "0123abcd", "_BUCKET": "tfx-e2e-test-bucket",
               "_SERVICE_ACCOUNT": "pipelines@tfx-e2e-test.iam.gserviceaccount.com", "_REGION": "europe-west4"}


def _make_targets():
    return set(re.findall(r"^([a-z][\w-]*):", (REPO / "Makefile").read_text(), re.M))


def _substitute(text, values):
    """Cloud Build's dynamic substitution, repeated until nothing changes (_IMAGE refers to others)."""
    for _ in range(5):
        text = re.sub(r"\$\{?(\w+)\}?", lambda m: values.get(m.group(1), m.group(0)), text)
    return text


def _values():
    declared = {name: str(value) for name, value in BUILD["substitutions"].items()}
    return {**declared, **TEST_VALUES}


def _step_env(step_id):
    return dict(_substitute(item, _values()).split("=", 1) for item in STEPS[step_id].get("env", []))


def test_steps_in_the_documented_order():
    assert list(STEPS) == ["install", "unit-tests", "lint", "local-e2e", "build-image", "push-image", "gcp-config",
                           "compile", "upload", "submit"]
    assert STEPS["local-e2e"]["waitFor"] == ["unit-tests", "lint"]
    assert STEPS["build-image"]["waitFor"] == ["local-e2e"]  # no image from a commit that failed its checks
    assert BUILD["options"]["dynamicSubstitutions"] is True


def test_every_step_calls_something_that_exists():
    targets = _make_targets()
    for step in BUILD["steps"]:
        entrypoint, args = step.get("entrypoint"), step.get("args", [])
        if entrypoint == "make":
            assert set(args) <= targets, step["id"]
        elif entrypoint == "bash":
            script = REPO / args[0]
            assert script.is_file() and os.access(script, os.X_OK), step["id"]
            assert subprocess.run(["bash", "-n", str(script)]).returncode == 0, step["id"]
        else:
            assert step["name"] in BUILDER_COMMANDS, step["id"]
            assert (entrypoint or BUILDER_COMMANDS[step["name"]]) == BUILDER_COMMANDS[step["name"]]
    assert {"setup", "test-unit", "lint", "run", "compile-vertex"} <= targets
    assert STEPS["build-image"]["args"][-1] == "." and (REPO / "Dockerfile").is_file()


def test_every_substitution_used_is_declared_and_every_declared_one_used():
    text = (REPO / "cloudbuild.yaml").read_text()
    body = text.split("substitutions:", 1)[1]  # comments above may mention $(...) shell examples
    used = set(re.findall(r"\$\{(\w+)\}", body)) | set(re.findall(r"\$(\w+)", body))
    declared = set(BUILD["substitutions"])
    assert used - declared <= BUILT_IN, used - declared - BUILT_IN
    assert all(name.startswith("_") for name in declared)  # user substitutions must start with _
    assert declared <= used
    assert "${COMMIT_SHA}" in BUILD["substitutions"]["_IMAGE"]


def test_no_secrets():
    text = (REPO / "cloudbuild.yaml").read_text()
    assert "secretEnv" not in text and "availableSecrets" not in text
    assert not re.search(r"(?i)(password|passwd|api[_-]?key|token|private[_-]?key)\s*[:=]", text)
    assert not re.search(r"-----BEGIN|AKIA[0-9A-Z]{16}|AIza[0-9A-Za-z_\-]{35}", text)
    # Every value a person fills in defaults to empty or a public name, never a credential.
    assert BUILD["substitutions"]["_BUCKET"] == "" and BUILD["substitutions"]["_SERVICE_ACCOUNT"] == ""


def test_pipeline_name_and_image_match_the_configuration():
    config = load_config(env={"TFX_E2E_PROFILE": "local"})
    assert BUILD["substitutions"]["_PIPELINE_NAME"] == config.pipeline_name
    assert _substitute(BUILD["substitutions"]["_IMAGE"], _values()) == \
        "europe-west4-docker.pkg.dev/tfx-e2e-test/tfx-e2e/pipeline:0123abcd"
    upload = [_substitute(a, _values()) for a in STEPS["upload"]["args"]]
    assert upload == ["storage", "cp", "build/chicago-taxi.json",
                      "gs://tfx-e2e-test-bucket/pipelines/chicago-taxi/0123abcd.json"]
    assert os.path.relpath(kubeflow_v2_runner.compiled_path(config.pipeline_name), REPO) == upload[2]


def test_gcp_config_and_compile_steps_produce_the_pipeline_for_the_pushed_image(tmp_path, monkeypatch):
    """Runs the gcp-config step's script with the step's env, then the compile step's runner with its env."""
    overlay = tmp_path / "gcp.yaml"
    env = {**os.environ, **_step_env("gcp-config")}
    result = subprocess.run(["bash", str(REPO / ".ci/gcp-config"), str(overlay)], env=env, capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stderr
    compile_env = {**_step_env("compile"), "TFX_E2E_CONFIG": str(overlay)}
    config = load_config(env=compile_env)
    assert (config.gcp.project, config.gcp.region) == ("tfx-e2e-test", "europe-west4")
    assert config.output_root == "gs://tfx-e2e-test-bucket/tfx-e2e"
    assert config.image == "europe-west4-docker.pkg.dev/tfx-e2e-test/tfx-e2e/pipeline:0123abcd"

    for name, value in compile_env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(kubeflow_v2_runner, "COMPILED_DIR", tmp_path / "build")
    kubeflow_v2_runner.main()
    job = json.loads((tmp_path / "build" / "chicago-taxi.json").read_text())
    images = {e["container"]["image"] for e in job["pipelineSpec"]["deploymentSpec"]["executors"].values()
              if "container" in e}
    assert images == {config.image}
    assert job["runtimeConfig"]["gcsOutputDirectory"] == "gs://tfx-e2e-test-bucket/tfx-e2e/pipelines/chicago-taxi"


@pytest.mark.parametrize("env, message", [
    ({"PROJECT": "", "REGION": "europe-west4", "BUCKET": "b"}, "PROJECT is empty"),
    ({"PROJECT": "p", "REGION": "europe-west4", "BUCKET": ""}, "BUCKET is empty (set the matching substitution"),
    ({"PROJECT": "p", "REGION": "europe-west4", "BUCKET": "gs://b"}, "BUCKET is a bucket name, not a path"),
])
def test_gcp_config_rejects_missing_substitutions_and_writes_nothing(tmp_path, env, message):
    out = tmp_path / "gcp.yaml"
    result = subprocess.run(["bash", str(REPO / ".ci/gcp-config"), str(out)], env={**os.environ, **env},
                            capture_output=True, text=True)
    assert result.returncode == 2 and message in result.stderr
    assert not out.exists()


@pytest.mark.parametrize("mode, code, output", [
    ("none", 0, "not submitted (_SUBMIT=none)"),
    ("sometimes", 2, "MODE must be none, run or schedule, got 'sometimes'"),
])
def test_submit_step_modes(mode, code, output):
    result = subprocess.run(["bash", str(REPO / ".ci/vertex-submit"), "gs://b/pipelines/p/0123abcd.json"],
                            env={**os.environ, "MODE": mode}, capture_output=True, text=True, cwd=REPO)
    assert result.returncode == code
    assert output in result.stdout + result.stderr


def test_gcp_config_quotes_every_substitution(tmp_path):
    """Substitutions are pasted into YAML as double-quoted scalars: ": ", "#", quotes, backslashes and newlines
    come back as the same strings, and add no keys of their own."""
    out = tmp_path / "gcp.yaml"
    tricky = 'my-project: x # not a comment "quoted" \'single\' \\ back\nnext_key: injected'
    env = {**os.environ, "PROJECT": tricky, "REGION": "europe-west4 #1", "BUCKET": "b: c",
           "SERVICE_ACCOUNT": 'sa"@x\tz'}
    result = subprocess.run(["bash", str(REPO / ".ci/gcp-config"), str(out)], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    overlay = yaml.safe_load(out.read_text())
    assert overlay == {
        "output_root": "gs://b: c/tfx-e2e",
        "gcp": {"project": tricky, "region": "europe-west4 #1", "service_account": 'sa"@x\tz'},
        "dataflow": {"temp_location": "gs://b: c/dataflow/tmp", "staging_location": "gs://b: c/dataflow/staging"},
    }


def test_gcp_config_refuses_control_characters(tmp_path):
    out = tmp_path / "gcp.yaml"
    env = {**os.environ, "PROJECT": "p\x07", "REGION": "europe-west4", "BUCKET": "b"}
    result = subprocess.run(["bash", str(REPO / ".ci/gcp-config"), str(out)], env=env, capture_output=True, text=True)
    assert result.returncode == 2 and "PROJECT holds a control character" in result.stderr
    assert not out.exists() and not (tmp_path / "gcp.yaml.tmp").exists()
