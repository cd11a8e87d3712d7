# The controller image: Bytewax's Helm chart / waxctl contract (entrypoint.sh and
# entrypoint-recovery.sh in the working directory, uid 65532, read-only root
# filesystem; writable paths only on mounted volumes).

# ---- build: the locked runtime dependencies and the package into a virtualenv
FROM python:3.11-slim-bookworm AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
RUN python -m venv /opt/venv
COPY .ci/runtime.lock .ci/build.lock /src/
RUN /opt/venv/bin/pip install --require-hashes --no-deps -r /src/runtime.lock
# The package is built with the hash-pinned build backend, not whatever setuptools
# build isolation would fetch; the backend stays out of the runtime virtualenv.
RUN python -m venv /opt/build \
    && /opt/build/bin/pip install --require-hashes --no-deps -r /src/build.lock
COPY pyproject.toml README.md /src/
COPY dataflow /src/dataflow
# The wheel holds what pyproject.toml lists: the flow and its tools (probe, recovery,
# inspection, warm start), not dataflow.sim (the stand-ins, the demo, its process helper).
RUN /opt/build/bin/pip wheel --no-deps --no-build-isolation --wheel-dir /src/dist . \
    && /opt/venv/bin/pip install --no-deps /src/dist/*.whl

# ---- runtime: slim Python, the virtualenv, the entrypoints, nothing else
FROM python:3.11-slim-bookworm
LABEL org.opencontainers.image.title="rtcef-controller" \
      org.opencontainers.image.description="Run-time adaptation controller for complex event forecasting (Bytewax dataflow)"
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    BYTEWAX_DATAFLOW_API_CACHE_PATH=/tmp
COPY --from=build /opt/venv /opt/venv
WORKDIR /bytewax
COPY --chmod=0555 k8s/image/entrypoint.sh k8s/image/entrypoint-recovery.sh /bytewax/
USER 65532:65532
# 3030: Bytewax's Dataflow API and Prometheus /metrics; 9999: between processes.
EXPOSE 3030 9999
CMD ["sh", "./entrypoint.sh"]
