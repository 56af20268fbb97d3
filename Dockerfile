# podcron's image: the operator, the sidecar and the example jobs, in a virtual environment
# at /opt/podcron, run as a non-root user. Both containers of the chart's pod run it
# (`podcron operator`, `podcron sidecar`).
#
# Your own jobs: build FROM this image and install your package, which declares its jobs
# in the `podcron.jobs` entry-point group:
#
#     FROM podcron:0.1.0
#     USER root
#     RUN pip install --no-cache-dir myjobs==1.2.0     # the pip of /opt/podcron
#     USER 65532:65532
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/podcron
WORKDIR /src
# Only what the distribution is built from (see .dockerignore).
COPY pyproject.toml README.md ./
COPY operator ./operator
COPY examples ./examples
# Not editable: the image holds the package itself, compiled to bytecode, since a read-only
# root file system lets Python write no .pyc at run time.
RUN /opt/podcron/bin/pip install . && /opt/podcron/bin/podcron --help >/dev/null

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="podcron" \
      org.opencontainers.image.description="Runs Python entry points inside its own pod on a schedule" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --gid 65532 podcron \
 && useradd --uid 65532 --gid 65532 --create-home --home-dir /home/podcron \
            --shell /usr/sbin/nologin podcron
COPY --from=build /opt/podcron /opt/podcron
ENV PATH=/opt/podcron/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /home/podcron
USER 65532:65532
# The System API (sidecar) and /metrics, /healthz, /readyz (operator).
EXPOSE 8080 9090
ENTRYPOINT ["podcron"]
CMD ["operator"]
