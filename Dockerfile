# CPU image of the ranking service. Two stages:
#   build   - installs the training extra and runs the same make targets as CI and the README
#             (data, encoder, train, export, index) to produce artifacts/ for the embedded SYNTHETIC default;
#   runtime - the serving code and dependencies only (no torch), the artifacts, a non-root user and a health check.
# To serve your own model and bundle, mount them over /app/artifacts.
#
#   docker build -t fusion-rank .
#   docker run --rm -p 8000:8000 -p 50051:50051 fusion-rank
#
# For a GPU host, the runtime stage installs the `gpu` extra instead (onnxruntime-gpu and faiss-cuda bring their CUDA
# libraries as wheels; the host gives the driver):
#   docker build --build-arg EXTRA=gpu -t fusion-rank:gpu .
#   docker run --rm --gpus all -p 8000:8000 -p 50051:50051 fusion-rank:gpu

FROM python:3.11-slim AS build
WORKDIR /app
RUN apt-get update && apt-get install -y --no-install-recommends make && rm -rf /var/lib/apt/lists/*
# torch from the CPU index first: PyPI's Linux torch wheel is the multi-GB CUDA build.
RUN pip install --no-cache-dir torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
COPY pyproject.toml README.md Makefile ./
COPY model model
COPY training training
COPY index index
COPY service service
RUN python -m venv --system-site-packages .venv && .venv/bin/pip install --no-cache-dir -e ".[cpu,train]" \
    && touch .venv/.installed-cpu
RUN make data encoder train export index

FROM python:3.11-slim AS runtime
ARG EXTRA=cpu
WORKDIR /app
COPY pyproject.toml README.md ./
# What serving imports, and nothing else (tests/test_layout.py checks both halves of that): the feature schema of
# model/, the torch-free runtime of index/, and service/. Not the exporters, the offline builders or training.
COPY model/__init__.py model/schema.py model/
COPY index/__init__.py index/
COPY index/runtime index/runtime
COPY service service
RUN pip install --no-cache-dir ".[${EXTRA}]" && useradd --create-home --uid 10001 ranker
COPY --from=build --chown=ranker /app/artifacts/encoders /app/artifacts/encoders
COPY --from=build --chown=ranker /app/artifacts/bundle /app/artifacts/bundle
# Every exported graph (ranker, query tower, candidate encoder), the canaries and the card; not the checkpoint.
COPY --from=build --chown=ranker /app/artifacts/*.onnx /app/artifacts/canaries.npz /app/artifacts/model_card.json \
     /app/artifacts/
USER ranker
ENV RANK_HOST=0.0.0.0 RANK_PORT=8000 RANK_GRPC_PORT=50051
EXPOSE 8000 50051
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/health/ready', timeout=2).status != 200)"
CMD ["python", "-m", "service"]
