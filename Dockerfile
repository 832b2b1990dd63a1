# stylecam on an NVIDIA GPU (README.md, "With Docker"):
#   docker build -t stylecam .
#   docker run --gpus all -p 8080:8080 -p 40000-40100:40000-40100/udp -v stylecam-cache:/cache \
#       stylecam --announced-address <the host's IP>
# or, on Linux, simply: docker run --gpus all --network host -v stylecam-cache:/cache stylecam
# The model downloads on first start into the /cache volume (owned by the image's user, uid
# 1000). Browsers need HTTPS for the camera on other machines: mount a certificate and key and
# add --cert/--key (README.md). `docker run ... stylecam --check` tests the GPU setup.
#
# Build arguments:
#   BASE_IMAGE   a Debian-based image with python3 (3.11+): python:3.12-slim, or Debian's
#                own python3 (.ci/build-image builds from a debootstrap base, no registry)
#   TORCH        the pip requirement for torch. PyPI's Linux x86_64 wheels bring the CUDA
#                runtime with them (only the NVIDIA driver comes from the host). transformers
#                5.x, which requirements.txt resolves to, switches torch < 2.6 off at import.
#   PIP_OPTIONS  extra options for every pip install, e.g. "--find-links /opt/wheels" (with
#                the folder as a build volume) or an --extra-index-url for another CUDA build
ARG BASE_IMAGE=python:3.12-slim
FROM ${BASE_IMAGE}

# The torch the H200 figures were measured with (BENCHMARKS.md); a CUDA 13 build from PyPI,
# which needs NVIDIA driver 580 or newer. For an older driver pick a torch built for its CUDA.
ARG TORCH="torch==2.11.0"
ARG PIP_OPTIONS=""

ENV LANG=C.UTF-8 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    HF_HOME=/cache \
    TORCHINDUCTOR_CACHE_DIR=/cache/torchinductor \
    TRITON_CACHE_DIR=/cache/triton \
    STYLECAM_UDP_PORTS=40000-40100

# A C compiler and Python's headers: --compile's Triton builds its launcher at run time.
# python:*-slim carries its headers and venv; Debian's python3 needs python3-dev/-venv.
RUN set -eux; \
    packages="gcc libc6-dev"; \
    python3 -c 'import os, sys, sysconfig; sys.exit(not os.path.isfile(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' \
        || packages="$packages python3-dev"; \
    python3 -c 'import ensurepip' 2>/dev/null || packages="$packages python3-venv"; \
    apt-get update; \
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $packages; \
    apt-get clean; \
    rm -rf /var/lib/apt/lists/*; \
    useradd --uid 1000 --user-group --create-home --home-dir /home/stylecam --shell /usr/sbin/nologin stylecam; \
    mkdir -p /cache; \
    chown stylecam:stylecam /cache; \
    python3 -m venv /opt/venv

# torch alone first: its layer (GBs with CUDA) survives changes to requirements.txt.
RUN pip install --no-cache-dir $PIP_OPTIONS --upgrade pip \
    && pip install --no-cache-dir $PIP_OPTIONS "$TORCH"

WORKDIR /app
COPY requirements.txt .
RUN pip install --no-cache-dir $PIP_OPTIONS -r requirements.txt \
    && python -c 'import torch, transformers.utils as t; assert t.is_torch_available(), "transformers refuses torch " + torch.__version__'

COPY . .
RUN python -m compileall -q /app

USER stylecam

# The image works: `--check` loads the tiny model (built offline, nothing downloaded) and
# pushes frames through the real engine on the CPU; it exits non-zero with the reason.
RUN HF_HUB_OFFLINE=1 timeout 600 python server.py --check --model tiny --device cpu --width 128 --height 128

VOLUME /cache
EXPOSE 8080 40000-40100/udp
# Healthy when /health says "ok" (http, or https when serving with a certificate). The first
# start downloads the model (several GB): failures within the start period do not count.
HEALTHCHECK --interval=30s --timeout=10s --start-period=15m --retries=3 \
    CMD for scheme in http https; do python -c "import json, os, ssl, sys, urllib.request as r; url = sys.argv[1] + '://127.0.0.1:' + os.environ.get('STYLECAM_PORT', '8080') + '/health'; body = json.load(r.urlopen(url, timeout=4, context=ssl._create_unverified_context())); print(json.dumps(body)); sys.exit(body['status'] != 'ok')" $scheme 2>/dev/null && exit 0; done; exit 1
ENTRYPOINT ["python", "server.py", "--host", "0.0.0.0"]
