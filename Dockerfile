# xrec service image: base dependencies only (no torch, no training code), non-root, health-checked.
# Build: docker build -t xrec:0.1.0 .     Run: see docker-compose.yml (a bundle is mounted at /bundle).

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY app ./app
COPY contract ./contract
COPY xrec ./xrec
# `tokenizers` runs the item encoder's tokenizer; listed here until pyproject's base dependencies have it.
RUN pip install . "tokenizers>=0.15"

FROM python:3.11-slim
# libgomp: the OpenMP runtime FAISS and ONNX Runtime use for their thread pools.
RUN apt-get update && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --create-home --home-dir /srv xrec \
    && mkdir -p /srv/events && chown xrec:xrec /srv/events && chmod 700 /srv/events
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    XREC_BUNDLE_DIR=/bundle \
    XREC_EVENTS_DIR=/srv/events \
    XREC_REDIS_URL=redis://redis:6379/0
USER xrec
WORKDIR /srv
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)"]
# One worker per container: metrics and caches are per process; scale with replicas.
CMD ["xrec", "serve", "--host", "0.0.0.0", "--port", "8000"]
