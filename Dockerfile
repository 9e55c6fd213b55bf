# syntax=docker/dockerfile:1
# One image for every fieldgate process: the five cloud services and the edge agent. The command
# chooses what runs (ENTRYPOINT is `fieldgate`):
#   fieldgate cloud run --config /etc/fieldgate/cloud.yaml inbound|registration|event-store|ingest|api
#   fieldgate edge run --config /etc/fieldgate/edge.yaml
# Build: docker build -t fieldgate:0.1.0 .   (tests/deploy/test_dockerfile.py runs these RUN steps
# outside Docker: a drift between this file and what the package needs fails the tests.)
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- builder: the fieldgate wheel and a wheel of every dependency ---------------------------
FROM ${PYTHON_IMAGE} AS builder
WORKDIR /src
# Only what the wheel is made of. fieldgate/cloud, fieldgate/edge and fieldgate/sims are
# symlinks to ../cloud, ../edge and ../firmware-sims: COPY keeps them as links, so their
# targets are copied beside them and setuptools follows the links into the wheel.
COPY pyproject.toml README.md ./
COPY fieldgate/ fieldgate/
COPY cloud/ cloud/
COPY edge/ edge/
COPY firmware-sims/ firmware-sims/
# The wheel of fieldgate itself (built in an isolated environment with the setuptools that
# pyproject's build-system asks for), then the wheels of all its dependencies, so the runtime
# stage installs with --no-index: nothing is compiled or fetched there.
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels . \
 && pip wheel --no-cache-dir --wheel-dir /wheels /wheels/fieldgate-*.whl

# ---- runtime: the wheels in a virtualenv, nothing else ---------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="fieldgate" \
      org.opencontainers.image.description="fieldgate cloud services and edge agent" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PATH=/opt/fieldgate/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
# The wheels are bind-mounted from the builder, not copied: they never become a layer.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    python -m venv /opt/fieldgate \
 && /opt/fieldgate/bin/pip install --no-cache-dir --no-index --find-links=/wheels /wheels/fieldgate-*.whl
# A fixed, numeric UID/GID (10001) so that Kubernetes' runAsNonRoot can verify it and hostPath
# directories (the edge buffer) can be given to it. State lives under /var/lib/fieldgate
# (an emptyDir or hostPath in Kubernetes); configuration is mounted under /etc/fieldgate.
RUN groupadd --system --gid 10001 fieldgate \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/fieldgate --no-create-home \
        --shell /usr/sbin/nologin fieldgate \
 && install -d -o 10001 -g 10001 -m 0750 /var/lib/fieldgate \
 && install -d -m 0755 /etc/fieldgate
WORKDIR /var/lib/fieldgate
USER 10001:10001
# REST (api), gRPC (ingest), health listener (cloud), metrics and health (edge), MQTT (edge).
EXPOSE 8080 50051 8081 9100 1883
ENTRYPOINT ["fieldgate"]
CMD ["--help"]
