# syntax=docker/dockerfile:1
# goalqueue worker image; the same image runs Flower and the dev sandbox (see docker-compose.yml).
# No secrets here: DATAFAST_API_KEY, REDIS_PASSWORD, FLOWER_BASIC_AUTH come from the environment
# at run time.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN groupadd --system --gid 10001 goalqueue \
 && useradd --system --uid 10001 --gid goalqueue --create-home --home-dir /home/goalqueue \
        --shell /usr/sbin/nologin goalqueue

# Flower first: it pulls in Celery, so code changes below reuse this cached layer.
RUN pip install --no-cache-dir "flower>=2.0,<3"

# .dockerignore lets in only pyproject.toml, README.md, goalqueue/ and workers/.
# The worker extra for the workers (and Flower's `celery -A workers`), the sandbox extra for
# the compose dev profile's sandbox, the metrics extra for the monitoring profile's exporter.
COPY . /src
RUN pip install --no-cache-dir "/src[worker,sandbox,metrics]" \
 && rm -rf /src

WORKDIR /home/goalqueue
# Numeric, so orchestrators can verify runAsNonRoot; also keeps Celery's root warning away.
USER 10001:10001

EXPOSE 5555 8765 9808
# Celery warm-shuts down on SIGTERM, finishing in-flight deliveries (see stop_grace_period).
STOPSIGNAL SIGTERM
CMD ["goalqueue", "worker"]
