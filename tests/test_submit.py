"""Submitting to Vertex AI and KFP. The cloud cannot be reached from here, so a test double stands in
for the cloud client only (aiplatform / kfp.Client); the test checks the request we build."""
import inspect

from pipeline.config import load_config
from runners.submit import submit_kfp, submit_vertex

OVERLAY = """
output_root: gs://tfx-e2e-test-bucket/tfx-e2e
gcp: {project: tfx-e2e-test, region: europe-west4, service_account: pipelines@tfx-e2e-test.iam.gserviceaccount.com}
image: europe-west4-docker.pkg.dev/tfx-e2e-test/tfx-e2e/pipeline:abc123
vertex: {schedule_cron: "0 3 * * 1"}
"""


class FakeAiplatform:
    """Records what aiplatform.PipelineJob receives (test double for the Vertex AI SDK)."""

    def __init__(self):
        self.calls = []
        fake = self

        class PipelineJob:
            def __init__(self, **kwargs):
                fake.calls.append(("PipelineJob", kwargs))

            def submit(self, **kwargs):
                fake.calls.append(("submit", kwargs))

            def create_schedule(self, **kwargs):
                fake.calls.append(("create_schedule", kwargs))
                return "schedule"

        class PipelineJobSchedule:
            def __init__(self, name):
                self.name = name

            @classmethod
            def list(cls, **kwargs):
                fake.calls.append(("PipelineJobSchedule.list", kwargs))
                return [cls("previous")]

            def delete(self, **kwargs):
                fake.calls.append(("delete", {**kwargs, "_schedule": self.name}))

        self.PipelineJob = PipelineJob
        self.PipelineJobSchedule = PipelineJobSchedule


def _accepted_by_the_real_sdk(calls):
    """Every recorded call binds to the real method's signature (google-cloud-aiplatform from the lock)."""
    from google.cloud.aiplatform import PipelineJob, PipelineJobSchedule

    methods = {"PipelineJob": PipelineJob.__init__, "submit": PipelineJob.submit,
               "create_schedule": PipelineJob.create_schedule, "delete": PipelineJobSchedule.delete}
    for name, kwargs in calls:
        kwargs = {k: v for k, v in kwargs.items() if not k.startswith("_")}
        if name == "PipelineJobSchedule.list":
            inspect.signature(PipelineJobSchedule.list).bind(**kwargs)
        else:
            inspect.signature(methods[name]).bind(None, **kwargs)


def _config(tmp_path):
    (tmp_path / "gcp.yaml").write_text(OVERLAY)
    return load_config(env={"TFX_E2E_PROFILE": "vertex", "TFX_E2E_CONFIG": str(tmp_path / "gcp.yaml")})


def test_vertex_run_request(tmp_path):
    fake = FakeAiplatform()
    submit_vertex(_config(tmp_path), "build/chicago-taxi.json", schedule=False, aiplatform=fake)
    assert fake.calls == [
        ("PipelineJob", {"display_name": "chicago-taxi", "template_path": "build/chicago-taxi.json",
                         "pipeline_root": "gs://tfx-e2e-test-bucket/tfx-e2e/pipelines/chicago-taxi",
                         "project": "tfx-e2e-test", "location": "europe-west4", "enable_caching": True,
                         "labels": {"tfx-e2e-reason": "manual"}}),
        ("submit", {"service_account": "pipelines@tfx-e2e-test.iam.gserviceaccount.com"}),
    ]
    _accepted_by_the_real_sdk(fake.calls)


def test_vertex_run_of_a_span_pipeline_records_why(tmp_path):
    """A pipeline that takes `span` (span folders on Cloud Storage) also takes `reason`: the run's parameters, which
    Vertex keeps in its ML Metadata, and the job's labels say why it ran and which span it reads."""
    (tmp_path / "gcp.yaml").write_text(OVERLAY + "example_gen: csv\ndata_root: gs://b/landing\n"
                                       "continuous: {span_folders: span}\n")
    config = load_config(env={"TFX_E2E_PROFILE": "vertex", "TFX_E2E_CONFIG": str(tmp_path / "gcp.yaml")})
    fake = FakeAiplatform()
    submit_vertex(config, "build/chicago-taxi.json", schedule=False, aiplatform=fake, parameter_values={"span": 7},
                  reason="monitoring_alert")
    job = fake.calls[0][1]
    assert job["parameter_values"] == {"span": 7, "reason": "monitoring_alert"}
    assert job["labels"] == {"tfx-e2e-reason": "monitoring_alert", "tfx-e2e-span": "7"}
    fake = FakeAiplatform()
    submit_vertex(config, "build/chicago-taxi.json", schedule=True, aiplatform=fake)
    assert fake.calls[0][1]["parameter_values"] == {"reason": "schedule"}
    _accepted_by_the_real_sdk(fake.calls)


def test_vertex_schedule_request(tmp_path):
    fake = FakeAiplatform()
    template = "gs://tfx-e2e-test-bucket/pipelines/abc123/chicago-taxi.json"
    assert submit_vertex(_config(tmp_path), template, schedule=True, aiplatform=fake) == "schedule"
    assert fake.calls[0][1]["template_path"] == template
    assert fake.calls[0][1]["labels"] == {"tfx-e2e-reason": "schedule"}
    # The previous schedule of the same name goes, the new one runs the new template.
    assert fake.calls[1:] == [
        ("PipelineJobSchedule.list", {"filter": 'display_name="chicago-taxi-schedule"', "project": "tfx-e2e-test",
                                      "location": "europe-west4"}),
        ("delete", {"_schedule": "previous"}),
        ("create_schedule", {"cron": "0 3 * * 1", "display_name": "chicago-taxi-schedule",
                             "service_account": "pipelines@tfx-e2e-test.iam.gserviceaccount.com"}),
    ]
    _accepted_by_the_real_sdk(fake.calls)


def test_kfp_run_request(tmp_path):
    calls = []

    class FakeKfpClient:
        def create_run_from_pipeline_package(self, path, **kwargs):
            calls.append((path, kwargs))
            return "run"

    assert submit_kfp(_config(tmp_path), "build/chicago-taxi.json", "https://kfp.example", FakeKfpClient()) == "run"
    assert calls == [("build/chicago-taxi.json", {"arguments": {}, "run_name": "chicago-taxi",
                                                  "experiment_name": "chicago-taxi", "enable_caching": True})]
    import kfp
    inspect.signature(kfp.Client.create_run_from_pipeline_package).bind(None, calls[0][0], **calls[0][1])
