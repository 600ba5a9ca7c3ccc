# syntax=docker/dockerfile:1
#
# Targets:
#   ferry (default)  `ferry serve` as a non-root user, WAL on the /data volume, the
#                    dashboard served by ferry itself at /
#   dashboard        the same dashboard build served by httpd on port 80, forwarding
#                    /ws, /healthz and /readyz to $FERRY_UPSTREAM (default http://ferry:8080)
#
#   docker build -t ferry .
#   docker build --target dashboard -t ferry-dashboard .
#
# Base images are pinned to exact versions, written out in each FROM so linters and
# scanners see them; add a digest too (image:tag@sha256:…) once one is resolved from a
# registry you trust.

# ---- dashboard build: dashboard/dist ------------------------------------------------------
FROM node:20.19.5-bookworm-slim AS dashboard-build
WORKDIR /src/dashboard
# Lockfile first: the npm ci layer is reused until the dependencies change.
COPY dashboard/package.json dashboard/package-lock.json ./
RUN npm ci --no-audit --no-fund --loglevel=error
COPY dashboard/ ./
# Relay the page connects to by default; empty = the page's own origin (same-origin setups:
# ferry serving the dashboard, or httpd forwarding /ws as in the `dashboard` target).
ARG VITE_FERRY_RELAY=""
ENV VITE_FERRY_RELAY=${VITE_FERRY_RELAY}
RUN npm run build

# ---- python build: a self-contained venv with ferry installed -------------------------------
FROM python:3.11.14-slim-bookworm AS python-build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
RUN python -m venv /opt/ferry
COPY pyproject.toml README.md ./
COPY common/ common/
COPY core/ core/
COPY wal/ wal/
COPY cluster/ cluster/
COPY bench/ bench/
# The runtime only (no extras: `bench` and `dev` stay out of the image). Every runtime
# dependency is pinned in pyproject.toml and ships a manylinux wheel for x86_64 and arm64,
# so the slim image needs no compiler.
RUN /opt/ferry/bin/pip install --no-cache-dir . \
    && /opt/ferry/bin/ferry serve --help >/dev/null

# ---- dashboard served by httpd ---------------------------------------------------------------
FROM httpd:2.4.65 AS dashboard
COPY ops/httpd/ferry-dashboard.conf /usr/local/apache2/conf/extra/ferry-dashboard.conf
RUN echo 'Include conf/extra/ferry-dashboard.conf' >> /usr/local/apache2/conf/httpd.conf
COPY --from=dashboard-build /src/dashboard/dist/ /usr/local/apache2/htdocs/
ENV FERRY_UPSTREAM=http://ferry:8080
EXPOSE 80
# httpd's image has no curl or wget; bash's /dev/tcp is enough to see the port answer.
HEALTHCHECK --interval=30s --timeout=3s --start-period=5s --retries=3 \
    CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/80 && printf 'GET / HTTP/1.0\\r\\n\\r\\n' >&3 && head -c 12 <&3 | grep -q ' 200'"]

# ---- ferry: the relay (default target) -----------------------------------------------------
FROM python:3.11.14-slim-bookworm AS ferry
LABEL org.opencontainers.image.title="ferry" \
      org.opencontainers.image.description="Durable WebSocket relay" \
      org.opencontainers.image.licenses="Apache-2.0"
# A fixed uid/gid so a host directory or volume can be prepared for it (chown 10001).
RUN groupadd --system --gid 10001 ferry \
    && useradd --system --uid 10001 --gid ferry --home-dir /data --no-create-home \
        --shell /usr/sbin/nologin ferry \
    && mkdir -p /data/wal \
    && chown -R ferry:ferry /data
COPY --from=python-build /opt/ferry /opt/ferry
COPY --from=dashboard-build /src/dashboard/dist/ /opt/ferry/dashboard/
# Refuses .env.example's placeholder secrets, then execs `ferry "$@"`.
COPY scripts/entrypoint.sh /usr/local/bin/ferry-entrypoint
# The commit this image was built from (CI: --build-arg FERRY_BUILD_COMMIT=$GITHUB_SHA);
# /healthz reports it, and the deploy waits until the new commit answers.
ARG FERRY_BUILD_COMMIT=unknown
LABEL org.opencontainers.image.revision=${FERRY_BUILD_COMMIT}
ENV PATH=/opt/ferry/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    FERRY_HOST=0.0.0.0 \
    FERRY_PORT=8080 \
    FERRY_WAL_DIR=/data/wal \
    FERRY_DB_URL=sqlite:////data/ferry.db \
    FERRY_DASHBOARD_DIR=/opt/ferry/dashboard \
    FERRY_BUILD_COMMIT=${FERRY_BUILD_COMMIT}
# The WAL (and the SQLite log, when no MySQL is configured) must outlive the container.
VOLUME ["/data"]
WORKDIR /data
USER 10001:10001
EXPOSE 8080
# Python is already in the image: no curl needed. /healthz is liveness; /readyz (WAL
# writable, database reachable) is for load balancers.
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request; r = urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('FERRY_PORT', '8080'), timeout=2); sys.exit(r.status != 200)"]
# SIGTERM: stop accepting, close clients with 1001, finish WAL batches, exit (docs/design.md §6).
STOPSIGNAL SIGTERM
ENTRYPOINT ["ferry-entrypoint"]
CMD ["serve"]
