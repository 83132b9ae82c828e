# syntax=docker/dockerfile:1
# The facematch-async image: the CLI (`facematch-async batch|summary|...`) as its entry point,
# and the onboarding example (uvicorn fastapi_kyc:app) for the Kubernetes kit in deploy/.
#
#   docker build --build-arg EXTRAS=redis,s3,examples -t REGISTRY/facematch-async:TAG .
#
# No secret goes into any layer: credentials reach the container at run time (a Kubernetes
# Secret, `docker run -e`), never as a build argument.

ARG PYTHON_VERSION=3.12
# Extras chosen at build time: redis (a shared rate-limit store), s3 (manifests and photos in
# buckets), examples (FastAPI and uvicorn for the onboarding service), images (downscaling).
# EXTRAS= (empty) builds the bare CLI.
ARG EXTRAS=redis,s3,examples

# --- build: every wheel the runtime needs, this project's built from the context -----------
FROM python:${PYTHON_VERSION}-slim-bookworm AS build
ARG EXTRAS
WORKDIR /src
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
# The context is an allow-list (.dockerignore): the package, its metadata and the example.
COPY pyproject.toml README.md ./
COPY facematch_async ./facematch_async
RUN python -m pip wheel --wheel-dir /wheels ".[${EXTRAS}]"

# --- runtime: a virtual environment installed from those wheels only, run as a non-root user
FROM python:${PYTHON_VERSION}-slim-bookworm AS runtime
ARG EXTRAS
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/facematch \
    PATH=/opt/facematch/bin:$PATH
# --no-index: nothing but the wheels built above, so the image holds this context's code
# even once a release of the same version is on PyPI (which is why no version is pinned).
# hadolint ignore=DL3013
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    python -m venv "$VIRTUAL_ENV" \
    && pip install --no-cache-dir --no-index --find-links=/wheels "facematch-async[${EXTRAS}]" \
    && groupadd --system --gid 10001 facematch \
    && useradd --system --uid 10001 --gid facematch --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin facematch
COPY examples/fastapi_kyc.py /app/fastapi_kyc.py
WORKDIR /app
# Numeric, so that Kubernetes' runAsNonRoot can check it.
USER 10001:10001
# SIGTERM (Kubernetes' stop signal) is the batch's cue to let the pairs in flight finish
# within --grace and exit 130 (a resume picks up the rest); uvicorn drains its requests on it.
# Both install their own handlers, as PID 1 must (a signal without one is ignored there and
# the kubelet's SIGKILL follows the grace period: so it goes for the short `summary`).
STOPSIGNAL SIGTERM
ENTRYPOINT ["facematch-async"]
CMD ["--help"]
