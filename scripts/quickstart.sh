#!/usr/bin/env bash
# The main job, end to end. With XREC_DATA=<mapping.toml> it uses that data; otherwise it writes a
# synthetic demo first, so it works on a fresh machine with no ../shared.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/xrec ] || bash scripts/install.sh
X=.venv/bin/xrec
OUT=${XREC_OUT:-runs/quickstart}
if [ -n "${XREC_DATA:-}" ]; then
  MAPPING=$XREC_DATA
else
  $X data demo "$OUT/raw"
  MAPPING="$OUT/raw/mapping.toml"
fi
$X data build "$MAPPING" --out "$OUT/dataset"
echo "dataset: $OUT/dataset (report: $OUT/dataset/report.json)"
