# syntax=docker/dockerfile:1
# One image for every role; the command picks it: worker (default), callbacks, simulator, publish, events, demo.

ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src

# Dependencies first, from pyproject.toml alone, so that a source change does not reinstall them.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > requirements.txt \
    && pip install --no-cache-dir -r requirements.txt

COPY README.md ./
COPY wsdl ./wsdl
COPY schemas ./schemas
COPY worker ./worker
RUN pip install --no-cache-dir --no-deps . \
    && python -c "import worker.settings"

FROM ${PYTHON_IMAGE} AS runtime
# tini is PID 1: it forwards SIGTERM to the python process (which drains and exits) and reaps zombies.
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini=0.19.0-1+b3 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 mpesa \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin mpesa \
    && install -d -o 10001 -g 10001 -m 0750 /var/lib/mpesa-b2c

COPY --from=builder /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    B2C_DATA_DIR=/var/lib/mpesa-b2c \
    B2C_HEALTH_PORT=8330
WORKDIR /var/lib/mpesa-b2c
USER 10001:10001

# simulator 8310, callbacks 8320, worker metrics/health 8330
EXPOSE 8310 8320 8330

# Every serving role answers /healthz on its port: callbacks and simulator set B2C_HEALTH_PORT to theirs
# (8320, 8310); one-shot roles (publish, events, demo) run with --no-healthcheck or compose's `disable`.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('B2C_HEALTH_PORT', '8330') + '/healthz', timeout=4)"]

ENTRYPOINT ["/usr/bin/tini", "--", "mpesa-b2c"]
CMD ["worker"]
