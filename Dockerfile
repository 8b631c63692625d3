# syntax=docker/dockerfile:1
# GPU Portal image: the web app, API and task workers. Build: docker build -t gpu-portal .

FROM python:3.11-slim-bookworm AS base
# PYTHONPATH: the portal is imported from /app, where the app's Reflex project (rxconfig.py, assets, the
# pages' build) lives, rather than from the installed copy in the venv.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    REFLEX_TELEMETRY_ENABLED=false \
    REFLEX_CHECK_LATEST_VERSION=0 \
    REFLEX_DIR=/app/.reflex \
    BUN_INSTALL_CACHE_DIR=/app/.bun-cache \
    REFLEX_BUN_PATH=/opt/tools/node_modules/@oven/bun-linux-x64/bin/bun \
    PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/app
# Reflex builds its frontend with bun (from npm) and checks for Node.js; nebula is the overlay's (the CA signs
# with nebula-cert, `portal mesh` runs a lighthouse).
RUN apt-get update \
    && apt-get install -y --no-install-recommends nodejs npm nebula \
    && rm -rf /var/lib/apt/lists/* \
    && npm install --prefix /opt/tools --no-save --no-audit --no-fund --ignore-scripts @oven/bun-linux-x64@1.4.5 \
    && npm cache clean --force
WORKDIR /app

# The worker agent alone, for providers' machines: only gpu_pool/ and its own pyproject (Ray, NVML, httpx;
# none of the server). Build: docker build --target agent -t gpu-pool:0.1.0 .
# Nebula: the agent joins the overlay when the portal runs one.
FROM python:3.11-slim-bookworm AS agent
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH
RUN apt-get update \
    && apt-get install -y --no-install-recommends nebula \
    && rm -rf /var/lib/apt/lists/*
COPY constraints.txt /tmp/agent/constraints.txt
COPY gpu_pool /tmp/agent/gpu_pool
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install -c /tmp/agent/constraints.txt /tmp/agent/gpu_pool \
    && rm -rf /tmp/agent \
    && useradd --create-home --uid 10001 gpu-pool
USER 10001
CMD ["gpu-pool", "--help"]

FROM base AS build
COPY pyproject.toml constraints.txt README.md ./
COPY portal ./portal
COPY tasks ./tasks
COPY gpu_pool ./gpu_pool
RUN python -m venv /opt/venv && /opt/venv/bin/pip install -c constraints.txt .
COPY rxconfig.py alembic.ini ./
COPY alembic ./alembic
COPY assets ./assets
COPY reflex.lock ./reflex.lock
# Install the frontend packages and build the pages once, at image build: `portal run` serves this build
# (stamped with what it was built from) at each start without building again.
RUN portal build

FROM base AS runtime
RUN useradd --create-home --uid 10001 portal
COPY --from=build /opt/venv /opt/venv
COPY --from=build --chown=portal:portal /app /app
USER 10001
ENV PORTAL_HOST=0.0.0.0 \
    PORTAL_PORT=3000 \
    PORTAL_DATA_DIR=/app/data
EXPOSE 3000
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:3000/healthz', timeout=4)"]
CMD ["portal", "run", "--no-demo"]
