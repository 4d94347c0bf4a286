# nst-batch on a GPU server. Build: docker build -t nst-batch .
# Run:   docker run --gpus all -v "$PWD/data:/data" nst-batch stylize /data/in.jpg /data/style.jpg -o /data/out.png
FROM nvidia/cuda:12.8.1-runtime-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /opt/nst-batch
# torch first (the registry's CUDA build), then the package with ONNX Runtime for GPUs.
RUN pip install "torch==2.13.0"
COPY pyproject.toml README.md ./
COPY nst_batch ./nst_batch
RUN pip install ".[gpu]"

RUN useradd --create-home --uid 1000 nst
USER nst
ENV NST_BATCH_CACHE=/home/nst/.cache/nst-batch
# Decode the bundled VGG19 weights now, so a container starts without that step.
RUN nst-batch weights

VOLUME /data
WORKDIR /data
ENTRYPOINT ["nst-batch"]
CMD ["--help"]
