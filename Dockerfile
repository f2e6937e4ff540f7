# quotarelay in a container: the relay by default, the billing API with
#   docker run ... IMAGE billing serve --config /etc/quotarelay/billing.toml
# Mount the config (mode 0600, owned by uid 10001) at /etc/quotarelay and keep
# /var/lib/quotarelay on a volume: host keys, journals, stream logs and SQLite
# files live there (relative paths in the config resolve against it). Listen on
# 0.0.0.0 in the config to be reachable through published ports. See
# docs/operations.md#running-as-a-service.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY quota ./quota
COPY relay ./relay
COPY tools ./tools
# What running needs, and uvloop: no test, lint or bench tools.
RUN pip install --no-cache-dir --root-user-action=ignore --prefix=/install '.[fast]'

FROM python:3.11-slim
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/quotarelay \
        --create-home --shell /usr/sbin/nologin quotarelay \
    && chmod 0700 /var/lib/quotarelay
COPY --from=build /install /usr/local
USER quotarelay
WORKDIR /var/lib/quotarelay
VOLUME ["/var/lib/quotarelay"]
# relay SSH, relay admin API, billing API
EXPOSE 2222 8022 8480
STOPSIGNAL SIGTERM
ENTRYPOINT ["quotarelay"]
CMD ["relay", "run", "--config", "/etc/quotarelay/relay.toml"]
