# nst-batch on a GPU server: a watch-folder daemon on /data/inbox by default.
# Build: docker build -t nst-batch .
# Run as yourself, so that data/ (any owner) is writable and the results are yours:
#        mkdir -p data/inbox
#        docker run --gpus all --user "$(id -u):$(id -g)" -v "$PWD/data:/data" nst-batch
#        (drop NAME.content.jpg + NAME.style.jpg into data/inbox; results land in data/outbox;
#        a NAME.content.mp4 becomes data/outbox/NAME.mp4)
# One-off: docker run --gpus all --user "$(id -u):$(id -g)" -v "$PWD/data:/data" nst-batch \
#              stylize /data/in.jpg /data/style.jpg -o /data/out.png
#
# One CUDA stack, from pip: no CUDA base image. The PyPI torch 2.13.0 wheel brings CUDA 13 and
# cuDNN 9 as NVIDIA pip packages (the host needs only an NVIDIA driver for CUDA 13, R580 or newer,
# and the NVIDIA container toolkit). onnxruntime-gpu 1.28 and later are built for CUDA 13 and their
# [cuda,cudnn] extras name the same pip packages, so pip installs each library once; torch is
# imported before any ONNX Runtime session is made, so ONNX Runtime runs on torch's libraries.
FROM python:3.12-slim-bookworm

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /opt/nst-batch
# torch and ONNX Runtime for GPUs in one resolve, then the package (its `gpu` extra is satisfied).
RUN pip install "torch==2.13.0" "onnxruntime-gpu[cuda,cudnn]>=1.28,<2"
COPY pyproject.toml README.md ./
COPY nst_batch ./nst_batch
# `video`: PyAV and headless OpenCV, so a dropped NAME.content.mp4 is stylized into NAME.mp4.
# Refuse a second stack: no CPU onnxruntime beside onnxruntime-gpu, no CUDA 11/12 pip packages.
RUN pip install ".[gpu,video]" \
    && pip check \
    && ! pip list --format=freeze | grep -iE '^(onnxruntime|nvidia-[a-z0-9-]+-cu1[12])=='

# Any uid may run the image (docker run --user, Kubernetes runAsUser); nothing is chown'ed, and a
# mounted /data keeps its owner. HOME, the caches and the image's own /data (what seeds a new named
# volume) are writable by everyone, sticky like /tmp; the weights, decoded here at build time, are
# readable by everyone. USER gives getpass.getuser() (torch's compile caches) a name for a uid
# without a passwd entry.
ENV HOME=/home/nst \
    XDG_CACHE_HOME=/home/nst/.cache \
    NST_BATCH_CACHE=/opt/nst-batch/cache \
    USER=nst
RUN useradd --no-create-home --home-dir /home/nst --uid 1000 --user-group nst \
    && mkdir -p /home/nst/.cache /opt/nst-batch/cache/onnx /data \
    && nst-batch weights \
    && chmod -R a+rX /opt/nst-batch/cache \
    && chmod 1777 /home/nst /home/nst/.cache /opt/nst-batch/cache /opt/nst-batch/cache/onnx /data
# The default when no --user is given; not root.
USER 1000:1000

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
