# The project's image: KFP / Vertex AI Pipelines containers, Vertex AI training, Dataflow's workers.
#   docker build -t REGION-docker.pkg.dev/PROJECT/REPOSITORY/pipeline:TAG .      (cloudbuild.yaml does this)
# Then `image:` in the configuration (or TFX_E2E_IMAGE) names it.
#
# The official TFX image brings TensorFlow with GPU support and TFX's container entrypoints on its
# Python (3.10). requirements/image-lock.txt pins the same dependencies as requirements/lock.txt,
# resolved for that Python (`make lock`); tests/test_image.py checks the two agree.
ARG TFX_VERSION=1.16.0
ARG BEAM_VERSION=2.59.0
ARG PYTHON_VERSION=3.10

# Dataflow starts its workers with Beam's boot program, which a custom sdk_container_image must carry.
FROM apache/beam_python${PYTHON_VERSION}_sdk:${BEAM_VERSION} AS beam
FROM gcr.io/tfx-oss-public/tfx:${TFX_VERSION}
ARG TFX_VERSION

WORKDIR /pipeline
# Every file pip installs must match a sha256 of the lock (--require-hashes); tfx.txt pins tfx itself.
COPY requirements/image-lock.txt requirements/tfx.txt requirements/
RUN python -m pip install --no-cache-dir --require-hashes --no-deps -r requirements/image-lock.txt \
 && python -m pip install --no-cache-dir --require-hashes --no-deps -r requirements/tfx.txt

# Paths under /pipeline are what the `vertex` profile reads inside the image (schema_path).
COPY setup.py ./
COPY pipeline pipeline
COPY modules modules
COPY runners runners
COPY reports reports
COPY serving serving
COPY monitoring monitoring
COPY registry registry
COPY console console
COPY schema schema
# Editable, as `make setup` does: the package is /pipeline itself, so REPO_ROOT is /pipeline in the image.
RUN python -m pip install --no-cache-dir --no-deps --no-build-isolation -e . \
 && python -c "import pipeline.pusher, modules.preprocessing, modules.training, modules.tuning" \
 && chmod -R a+rX /pipeline

COPY --from=beam /opt/apache/beam /opt/apache/beam
# Not root (the TFX image has no USER of its own): a numeric uid, so that Kubernetes' runAsNonRoot can verify it.
# It reads /pipeline and the Python environment (root's, world-readable: made so above for /pipeline, whatever the
# checkout's umask) and writes only under its home and /tmp; the components write to output_root (gs://).
RUN useradd --uid 10001 --user-group --create-home --home-dir /home/pipeline --shell /usr/sbin/nologin pipeline
ENV HOME=/home/pipeline
USER 10001:10001
# KFP, Vertex training and TFX's launchers give their own command; a bare container is a Beam worker.
ENTRYPOINT ["/opt/apache/beam/boot"]
