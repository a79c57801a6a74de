#!/usr/bin/env bash
# Create .venv with the pinned stack, from nothing. A no-op when .venv already matches.
#
# Why a script and not a plain `pip install -e .`: torchrec 1.9.2's metadata requires the CUDA
# build `fbgemm-gpu`, which fails to import on a host without an NVIDIA driver. So torchrec is
# installed with --no-deps, its other requirements come from pyproject.toml by name, and the
# fbgemm variant that fits this host is chosen here. torch, torchrec and fbgemm move in
# lock-step (a mismatch fails at import with "Could not load this library").
# Plain pip is used on purpose: it finds the machine's local wheel cache for torch.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
VENV=${VENV:-.venv}
TORCH=2.14.1
TORCHREC=1.9.2
FBGEMM=1.9.0

if [ -n "${RECSYS_MTL_FBGEMM:-}" ]; then
    FBGEMM_PKG=$RECSYS_MTL_FBGEMM
elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    FBGEMM_PKG=fbgemm-gpu
else
    FBGEMM_PKG=fbgemm-gpu-cpu
fi

# The stamp records what was installed; a matching stamp and an importable stack mean no work.
want="torch=$TORCH torchrec=$TORCHREC $FBGEMM_PKG=$FBGEMM pyproject=$(sha256sum pyproject.toml | cut -c1-16)"
stamp="$VENV/.recsys-mtl-stamp"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] \
    && "$VENV/bin/python" -c "import torchrec, fbgemm_gpu, recsys_mtl" >/dev/null 2>&1; then
    echo "setup: $VENV is up to date ($want)"
    exit 0
fi

echo "setup: building $VENV with $want"
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
"${PIP[@]}" install "torch==$TORCH"
"${PIP[@]}" install --no-deps "torchrec==$TORCHREC" "$FBGEMM_PKG==$FBGEMM"
echo "setup: installing recsys-mtl and its pinned dependencies (pip will note that torchrec" \
    "'requires fbgemm-gpu': expected, $FBGEMM_PKG provides it)"
"${PIP[@]}" install -e ".[dev]"
# Fail here, not in the first test, if the trio does not load together.
"$VENV/bin/python" -c "import torch, torchrec, fbgemm_gpu; print('setup: torch', torch.__version__, 'torchrec', torchrec.__version__)"
echo "$want" > "$stamp"
