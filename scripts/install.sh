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
echo "installed: $(.venv/bin/xrec --help >/dev/null && echo xrec CLI ok)"
