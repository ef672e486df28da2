# One image for both roles: `docker run IMAGE serve` (the API) or `docker run IMAGE worker`.
# It mirrors the README's install steps: a virtualenv with the project installed, nothing else.
FROM python:3.12-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY ahop ./ahop
COPY app ./app
COPY worker ./worker
COPY storage ./storage
COPY targets ./targets
COPY migrations ./migrations
RUN python -m venv /opt/ahop && /opt/ahop/bin/pip install --no-cache-dir .

FROM python:3.12-slim
# git: the server keeps bare mirrors of template repositories; ca-certificates for https remotes.
RUN apt-get update \
    && apt-get install -y --no-install-recommends git openssh-client ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --create-home --home-dir /var/lib/ahop --shell /usr/sbin/nologin ahop \
    && mkdir -p /opt/ahop-worker && chown ahop:ahop /opt/ahop-worker
COPY --from=build /opt/ahop /opt/ahop
ENV PATH=/opt/ahop/bin:$PATH \
    AHOP_HOST=0.0.0.0 \
    AHOP_DATA_DIR=/var/lib/ahop \
    AHOP_WORKER_ROOT=/opt/ahop-worker
USER ahop
EXPOSE 8000
ENTRYPOINT ["ahop"]
CMD ["serve"]
