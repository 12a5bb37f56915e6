FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY pyproject.toml README.md ./
COPY src ./src
# The project itself with its PostgreSQL driver (the extra's bounds live in pyproject.toml).
# hadolint ignore=DL3013
RUN pip install --no-cache-dir ".[postgres]" \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin feedhook \
    && mkdir -p /data /etc/feedhook \
    && chown feedhook /data

ENV FEEDHOOK_DB=/data/feedhook.db \
    FEEDHOOK_CONFIG=/etc/feedhook/hooks.yaml \
    FEEDHOOK_ADMIN_HOST=0.0.0.0 \
    FEEDHOOK_LOG_FORMAT=json

VOLUME ["/data"]
EXPOSE 8080
USER 10001
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=5s --start-period=15s --retries=3 \
    CMD ["feedhook", "healthcheck"]
ENTRYPOINT ["feedhook"]
CMD ["run"]
