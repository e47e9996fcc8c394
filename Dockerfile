# xrec service image: base dependencies only (no torch, no training code), non-root, health-checked.
# Build: docker build -t xrec:0.1.0 .     Run: see docker-compose.yml (a bundle is mounted at /bundle).
# GPU nodes: Dockerfile.gpu (onnxruntime-gpu on a CUDA runtime base). Lint: .venv/bin/hadolint Dockerfile*

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY app ./app
COPY contract ./contract
COPY xrec ./xrec
RUN pip install .

FROM python:3.11-slim
# No apt packages: the wheels bring their native libraries (FAISS its own OpenMP runtime, libgomp, in
# faiss_cpu.libs; ONNX Runtime its thread pool); what they link besides is in the base (libstdc++, zlib).
# Numeric user and group (10001, as deploy/k8s runs it): runAsNonRoot can verify them.
RUN groupadd --system --gid 10001 xrec \
    && useradd --system --uid 10001 --gid 10001 --create-home --home-dir /srv xrec \
    && mkdir -p /srv/events && chown 10001:10001 /srv/events && chmod 700 /srv/events
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    XREC_BUNDLE_DIR=/bundle \
    XREC_EVENTS_DIR=/srv/events \
    XREC_REDIS_URL=redis://redis:6379/0
USER 10001:10001
WORKDIR /srv
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)"]
# One worker per container: metrics and caches are per process; scale with replicas.
CMD ["xrec", "serve", "--host", "0.0.0.0", "--port", "8000"]
