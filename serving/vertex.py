"""The canary rollout on a Vertex AI endpoint: what IstioTraffic and Servers (serving/rollout.py) do for TF Serving,
for Vertex AI, so that the same controller and analysis promote or roll back there.

- VertexTraffic.apply(record): every version the record serves is uploaded to the Model Registry once (a Model
  `<model_name>-<version>` with Google's prebuilt TensorFlow GPU prediction container, labelled with its version)
  and deployed to the endpoint `<model_name>` (created if missing) on vertex.machine_type with its accelerator; the
  endpoint's traffic split gives the canary its percent and stable the rest (an A/B test's arm B is the canary:
  the same split, held for the period); deployed versions the record no longer serves are undeployed; rejected
  versions get the label tfx_e2e_rollout=rejected in the registry.
- VertexMetrics: per version, the endpoint's requests, errors and latency distribution from Cloud Monitoring
  (aiplatform.googleapis.com/prediction/online/*), summed since the controller started, in the Figures the
  analysis reads.

The SDK clients are parameters (tests pass doubles bound to the real signatures, tests/test_serving_rollout.py).
"""
import time

from pipeline.config import Config
from serving.registry import RolloutRecord
from serving.rollout import Figures

# The newest TensorFlow that Google's prebuilt prediction containers in the locked SDK serve (models are saved
# with 2.16; TF Serving reads SavedModels of a newer minor version that use no newer ops).
CONTAINER_TF_VERSION = "2.15"
# Underscores: label keys appear in Model.list filters.
VERSION_LABEL, ROLLOUT_LABEL = "tfx_e2e_version", "tfx_e2e_rollout"
METRIC = "aiplatform.googleapis.com/prediction/online/"


def deployed_name(config: Config, version: int) -> str:
    return f"{config.model_name}-{version}"


class VertexTraffic:
    def __init__(self, config: Config, aiplatform=None):
        if aiplatform is None:
            from google.cloud import aiplatform
        self.config, self.aiplatform = config, aiplatform
        self.where = {"project": config.gcp.project, "location": config.gcp.region}

    def endpoint(self):
        name = self.config.model_name.replace("_", "-")
        found = self.aiplatform.Endpoint.list(filter=f'display_name="{name}"', **self.where)
        return found[0] if found else self.aiplatform.Endpoint.create(display_name=name, **self.where)

    def _registered(self, version: int):
        found = self.aiplatform.Model.list(filter=f'labels.{VERSION_LABEL}="{version}"', **self.where)
        return found[0] if found else None

    def _upload(self, version: int):
        container = self.aiplatform.helpers.get_prebuilt_prediction_container_uri(
            framework="tensorflow", framework_version=CONTAINER_TF_VERSION, region=self.config.gcp.region,
            accelerator="gpu")
        return self.aiplatform.Model.upload(
            display_name=deployed_name(self.config, version), artifact_uri=f"{self.config.serving_model_dir}/{version}",
            serving_container_image_uri=container, labels={VERSION_LABEL: str(version)}, **self.where)

    def apply(self, record: RolloutRecord) -> None:
        endpoint = self.endpoint()
        deployed = {m.display_name: m.id for m in endpoint.list_models()}
        for version in sorted(record.served()):
            if deployed_name(self.config, version) not in deployed:
                vertex = self.config.vertex
                endpoint.deploy(model=self._registered(version) or self._upload(version),
                                deployed_model_display_name=deployed_name(self.config, version),
                                # The first model on an endpoint must take all of its traffic.
                                traffic_percentage=0 if deployed else 100, machine_type=vertex.machine_type,
                                accelerator_type=vertex.accelerator_type or None,
                                accelerator_count=vertex.accelerator_count if vertex.accelerator_type else None,
                                min_replica_count=1, max_replica_count=1)
                deployed = {m.display_name: m.id for m in endpoint.list_models()}
        split = {deployed[deployed_name(self.config, record.stable)]: 100 - record.canary_percent}
        if record.canary is not None:
            split[deployed[deployed_name(self.config, record.canary)]] = record.canary_percent
        split.update({deployed[deployed_name(self.config, v)]: 0 for v in record.served() if v != record.stable
                      and v != record.canary})
        endpoint.update(traffic_split=split)
        served = {deployed_name(self.config, v) for v in record.served()}
        for name, deployed_id in sorted(deployed.items()):
            if name not in served:
                endpoint.undeploy(deployed_model_id=deployed_id)
        for version in sorted(int(v) for v in record.rejected):
            model = self._registered(version)
            if model is not None and model.labels.get(ROLLOUT_LABEL) != "rejected":
                model.update(labels={**model.labels, ROLLOUT_LABEL: "rejected"})


class VertexMetrics:
    """The controller's view of a Vertex endpoint (figures per version, availability), like rollout.Servers."""

    def __init__(self, traffic: VertexTraffic, monitoring=None, clock=time.time):
        if monitoring is None:
            from google.cloud import monitoring_v3
            monitoring = monitoring_v3.MetricServiceClient()
        self.traffic, self.monitoring, self.clock = traffic, monitoring, clock
        self.model = traffic.config.model_name
        self.start = clock()  # figures are sums since then: cumulative, as the analysis' windows expect

    def _versions(self, endpoint) -> dict[str, str]:
        """deployed model id -> version."""
        prefix = f"{self.model}-"
        return {m.id: m.display_name[len(prefix):] for m in endpoint.list_models()
                if m.display_name.startswith(prefix)}

    def available(self, version: int) -> bool:
        """Endpoint.deploy returns once the deployed model serves."""
        return str(version) in self._versions(self.traffic.endpoint()).values()

    def _series(self, endpoint, metric: str):
        from google.cloud import monitoring_v3

        end = self.clock()
        interval = monitoring_v3.TimeInterval(start_time={"seconds": int(self.start)},
                                              end_time={"seconds": int(end) + 1})
        return self.monitoring.list_time_series(
            name=f"projects/{self.traffic.config.gcp.project}",
            filter=f'metric.type="{METRIC}{metric}" AND resource.labels.endpoint_id="{endpoint.name}"',
            interval=interval, view=monitoring_v3.ListTimeSeriesRequest.TimeSeriesView.FULL)

    def figures(self) -> dict[str, Figures]:
        endpoint = self.traffic.endpoint()
        versions = self._versions(endpoint)
        totals: dict[str, Figures] = {}
        for metric, errors in (("prediction_count", False), ("error_count", True)):
            for series in self._series(endpoint, metric):
                version = versions.get(series.resource.labels["deployed_model_id"])
                if version is None:
                    continue
                count = float(sum(point.value.int64_value for point in series.points))
                totals[version] = totals.get(version, Figures()) + (Figures(0.0, count) if errors else
                                                                     Figures(count, 0.0))
        for series in self._series(endpoint, "prediction_latencies"):
            version = versions.get(series.resource.labels["deployed_model_id"])
            if version is not None:
                for point in series.points:
                    totals[version] = totals.get(version, Figures()) + Figures(
                        0.0, 0.0, _cumulative_us(point.value.distribution_value))
        return totals


def _cumulative_us(distribution) -> tuple[tuple[float, float], ...]:
    """A Cloud Monitoring distribution of milliseconds as the analysis' cumulative buckets in microseconds: bucket
    i (i >= 1) holds values below bound i, the last one the overflow."""
    options = distribution.bucket_options
    if options.explicit_buckets.bounds:
        bounds = list(options.explicit_buckets.bounds)
    else:
        exponential = options.exponential_buckets
        bounds = [exponential.scale * exponential.growth_factor ** i
                  for i in range(exponential.num_finite_buckets + 1)]
    counts = list(distribution.bucket_counts) + [0] * (len(bounds) + 1 - len(distribution.bucket_counts))
    cumulative, buckets = 0, []
    for bound, count in zip([*bounds, float("inf")], counts, strict=True):
        cumulative += count
        buckets.append((bound * 1000, float(cumulative)))
    return tuple(buckets)
