# syntax=docker/dockerfile:1
# arkd: the `ark` command (server, restic node agent, CLI, restic-wait init container) and restic.
#   docker build -t arkd/ark:latest .

# -- build: wheels of arkd and of every dependency, so the runtime stage needs no compiler ----------
FROM python:3.11-slim-bookworm AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY arkd ./arkd
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

# -- runtime ----------------------------------------------------------------------------------------
FROM python:3.11-slim-bookworm
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# restic from Debian bookworm (0.14); the node agent and the server run it as a subprocess.
RUN apt-get update \
    && apt-get install -y --no-install-recommends restic=0.14.* \
    && rm -rf /var/lib/apt/lists/*
# Installed from the build stage's wheels only (no index); the bind mount keeps them out of the image.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links=/wheels /wheels/arkd-*.whl \
    && ark --help >/dev/null \
    && restic version
# nobody: the server runs unprivileged; the restic DaemonSet overrides this with runAsUser 0 to read
# other pods' volumes.
USER 65534:65534
ENTRYPOINT ["ark"]
