# nst-batch on a GPU server: a watch-folder daemon on /data/inbox by default.
# Build: docker build -t nst-batch .
# Run:   mkdir -p data/inbox && docker run --gpus all -v "$PWD/data:/data" nst-batch
#        (drop NAME.content.jpg + NAME.style.jpg into data/inbox; results land in data/outbox)
# One-off: docker run --gpus all -v "$PWD/data:/data" nst-batch stylize /data/in.jpg /data/style.jpg -o /data/out.png
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
# status.json is rewritten every 5 s by a live daemon; its own worker's entry going stale means
# the daemon hangs (or died), whatever other replicas on the same inbox do.
HEALTHCHECK --interval=30s --timeout=10s --start-period=120s --retries=3 \
    CMD nst-batch status /data/inbox --max-age 60 --local || exit 1
# SIGTERM: the daemon stops taking jobs and lets the running one finish for --grace (8 s), within
# docker stop's 10 s; a longer grace needs `docker stop -t` / compose's stop_grace_period.
STOPSIGNAL SIGTERM
ENTRYPOINT ["nst-batch"]
CMD ["watch", "/data/inbox"]
