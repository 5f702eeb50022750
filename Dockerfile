# agent-backend: the agogd orchestration daemon of AgogSaaS.
#
#   docker build -t agogsaas/agent-backend .
#   (normally built by docker-compose.agents.yml)
#
# Configuration is entirely AGOG_* environment variables (see .env.example);
# no secret is baked into the image.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY orchestrator/ orchestrator/
COPY workers/ workers/
COPY migrations/ migrations/
RUN pip install --no-cache-dir . \
    && rm -rf /src

# Unprivileged runtime user; its home holds agogd's working directory.
RUN groupadd --system --gid 10001 agogd \
    && useradd --system --uid 10001 --gid agogd --home-dir /var/lib/agogd \
       --create-home --shell /usr/sbin/nologin agogd

USER agogd
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
