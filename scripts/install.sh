#!/usr/bin/env bash
# Create .venv and install xrec with its training, campaign (Ray) and dev extras, from nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# torch first and pinned: 2.13.0 is a CPU build already on disk; any other spec pulls GBs of CUDA wheels.
.venv/bin/python -m pip install -q torch==2.13.0
.venv/bin/python -m pip install -q -e ".[train,campaign,dev]"  # campaign: ray[data], ~15 s
# Flower for `xrec train --federated`, installed without its version caps: Flower 1.42 pins fastapi, starlette,
# uvicorn, typer, rich, packaging below the service's stack, and its simulation extra pins ray==2.55 (campaign
# needs >= 2.60); its simulation runs on the Ray above. Then the dependencies it needs that nothing else brings.
.venv/bin/python -m pip install -q --no-deps "flwr==1.42.0"
.venv/bin/python -m pip install -q "grpcio>=1.70,<2" "grpcio-health-checking>=1.70,<2" "cryptography>=50,<51" \
    "pycryptodome>=3.18,<4" "iterators>=0.0.2,<0.0.3" "tomli>=2.0.1,<3" "tomli-w>=1,<2" "pathspec>=1.0.4,<2" \
    "prompt-toolkit>=3.0.52,<4"
echo "installed: $(.venv/bin/xrec --help >/dev/null && echo xrec CLI ok)"
