# syntax=docker/dockerfile:1
# capi-sidecar image: build a wheel in one stage, install it in a slim one.
#
#   docker build -t capi-sidecar:0.1.0 .
#   docker run --rm -p 8790:8790 -p 9790:9790 \
#     -e CAPI_LISTEN=0.0.0.0:8790 -e CAPI_OPS_LISTEN=0.0.0.0:9790 capi-sidecar:0.1.0
#
# In Kubernetes, use the Helm chart (docs/deploy.md); it keeps ingest on
# loopback and binds the ops listener for probes and scraping.

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY sidecar/ sidecar/
COPY migrations/ migrations/
# The project's wheel plus a wheel of every dependency, so the runtime stage
# installs offline and needs no compiler.
RUN pip wheel --wheel-dir /wheels .

FROM ${PYTHON_IMAGE} AS runtime
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    CAPI_DB_PATH=/var/lib/capi-sidecar/outbox.db
# The wheels are bind-mounted from the builder, so they never become a layer.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-index --find-links /wheels capi-sidecar \
 && groupadd --system --gid 10001 capi \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin capi \
 && install -d -o 10001 -g 10001 -m 0700 /var/lib/capi-sidecar
USER 10001:10001
WORKDIR /var/lib/capi-sidecar
# 8790 ingest (Segment HTTP API), 9790 ops (/healthz, /readyz, /metrics).
# Both listen on 127.0.0.1 unless CAPI_LISTEN / CAPI_OPS_LISTEN say otherwise.
EXPOSE 8790 9790
# For plain Docker; Kubernetes ignores it and uses the chart's probes.
HEALTHCHECK --interval=30s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as u; h, _, p = os.environ.get('CAPI_OPS_LISTEN', '127.0.0.1:9790').rpartition(':'); h = h.strip('[]'); h = '127.0.0.1' if h in ('', '0.0.0.0', '::') else (f'[{h}]' if ':' in h else h); u.urlopen(f'http://{h}:{p}/healthz', timeout=2)"]
ENTRYPOINT ["capi-sidecar"]
CMD ["serve"]
