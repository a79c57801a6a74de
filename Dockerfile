# syntax=docker/dockerfile:1
# recsys-mtl: one image for the scoring server, the nightly job and its scheduler
# (docker-compose.yml runs all three; docs/OPERATIONS.md explains them).
#
#   docker build -t recsys-mtl .                                                  # CPU hosts
#   docker build -t recsys-mtl:cuda --build-arg RECSYS_MTL_FBGEMM=fbgemm-gpu .    # CUDA hosts
#
# The torch / torchrec / FBGEMM versions are not repeated here: the install step reads them from
# scripts/setup_venv.sh, the one place they are pinned, and installs the trio the way that script
# does (torchrec with --no-deps, because its metadata asks for the CUDA fbgemm-gpu, which fails to
# import on a host without an NVIDIA driver; then the FBGEMM variant chosen by RECSYS_MTL_FBGEMM,
# the same variable the script reads). The package itself goes in as a regular, non-editable
# install without the dev extras. tests/test_deploy.py runs this file's install steps against
# the script's and checks that they install the same versions.
#
# PyPI's torch 2.14.1 is a CUDA build (it runs fine on CPU), so the image is several GB either way.

ARG PYTHON_IMAGE=python:3.11-slim

# ---- build: a venv in /opt/venv --------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS build
# fbgemm-gpu-cpu for CPU hosts; fbgemm-gpu for CUDA hosts (run with the NVIDIA container toolkit)
ARG RECSYS_MTL_FBGEMM=fbgemm-gpu-cpu
ENV PATH=/opt/venv/bin:$PATH \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
RUN python -m venv /opt/venv

# 1. The pinned trio. Its own layer: it is the slow download (~3 GB) and changes least often.
COPY scripts/setup_venv.sh scripts/setup_venv.sh
RUN --mount=type=cache,target=/root/.cache/pip \
    eval "$(grep -E '^(TORCH|TORCHREC|FBGEMM)=[0-9][0-9.]*$' scripts/setup_venv.sh)" \
    && : "${TORCH:?no TORCH= pin in scripts/setup_venv.sh}" \
    && : "${TORCHREC:?no TORCHREC= pin in scripts/setup_venv.sh}" \
    && : "${FBGEMM:?no FBGEMM= pin in scripts/setup_venv.sh}" \
    && pip install "torch==$TORCH" \
    && pip install --no-deps "torchrec==$TORCHREC" "$RECSYS_MTL_FBGEMM==$FBGEMM"

# 2. recsys-mtl and its other dependencies, pinned in pyproject.toml (non-editable, no dev extras).
#    torch and FBGEMM are named again with their pins so that pip fails rather than swap them if a
#    dependency asked for another version (torchrec is no requirement here: pip leaves it alone).
#    pip reports "torchrec 1.9.2 requires fbgemm-gpu, which is not installed" on the CPU variant:
#    expected, fbgemm-gpu-cpu provides it. Then fail the build, not the first request, if the trio
#    does not load together; the CUDA fbgemm-gpu cannot load on a build machine without a driver,
#    so that variant imports torch only.
COPY pyproject.toml README.md ./
COPY recsys_mtl recsys_mtl
COPY serving serving
COPY pipelines pipelines
RUN --mount=type=cache,target=/root/.cache/pip \
    eval "$(grep -E '^(TORCH|TORCHREC|FBGEMM)=[0-9][0-9.]*$' scripts/setup_venv.sh)" \
    && pip install . "torch==$TORCH" "$RECSYS_MTL_FBGEMM==$FBGEMM" \
    && if [ "$RECSYS_MTL_FBGEMM" = fbgemm-gpu-cpu ]; then \
        python -c "import torch, torchrec, fbgemm_gpu, recsys_mtl, serving.app, pipelines.nightly"; \
    else \
        python -c "import torch, recsys_mtl, serving.config, pipelines"; \
    fi

# ---- runtime -----------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE}
ARG RECSYS_MTL_FBGEMM=fbgemm-gpu-cpu
LABEL org.opencontainers.image.title="recsys-mtl" \
      org.opencontainers.image.description="Multi-task ranking on TorchRec: scoring server, nightly job, scheduler" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PATH=/opt/venv/bin:$PATH \
    VIRTUAL_ENV=/opt/venv \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    MPLBACKEND=Agg \
    RECSYS_MTL_FBGEMM=${RECSYS_MTL_FBGEMM}

# A non-root user. The volume mount points exist in the image and belong to it, so an empty named
# volume mounted there starts out owned by this user (Docker copies the mount point's ownership).
RUN groupadd --gid 10001 recsys \
    && useradd --uid 10001 --gid recsys --create-home --home-dir /home/recsys --shell /usr/sbin/nologin recsys \
    && mkdir -p /registry /data /runs \
    && chown recsys:recsys /registry /data /runs

COPY --from=build /opt/venv /opt/venv
WORKDIR /app
# Recipes and serving configs (docker-compose.yml also mounts ./configs over these, so an edit of
# configs/serving.yaml on the host is hot-reloaded), and the nightly scheduler loop.
COPY configs configs
COPY scripts/nightly_scheduler.py scripts/nightly_scheduler.py

USER recsys
EXPOSE 8000
ENTRYPOINT ["recsys-mtl"]
CMD ["--help"]
