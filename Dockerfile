# One image for every Retenshun process: `retenshun api`, `retenshun worker`,
# `retenshun migrate` (see docker-compose.yml). Settings come from the environment.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Dependencies first, so a code change does not reinstall them: a stub package with the
# real pyproject.toml resolves and installs every dependency into this layer.
COPY pyproject.toml README.md* ./
RUN mkdir -p api core workflows activities migrations \
    && touch api/__init__.py core/__init__.py workflows/__init__.py activities/__init__.py \
       migrations/__init__.py worker.py \
    && pip install . \
    && pip uninstall -y retenshun \
    && rm -rf api core workflows activities migrations worker.py build *.egg-info

COPY api ./api
COPY core ./core
COPY workflows ./workflows
COPY activities ./activities
COPY migrations ./migrations
COPY worker.py ./
RUN pip install --no-deps . && rm -rf build *.egg-info \
    && useradd --system --uid 10001 --home-dir /app retenshun

USER retenshun
EXPOSE 8000
CMD ["retenshun", "api", "--host", "0.0.0.0", "--port", "8000"]
