#!/usr/bin/env bash
# The main job, end to end: data → train (fast profile) → export → serve on :8000.
# With XREC_DATA=<mapping.toml> it uses that data (e.g. configs/food-kitchen.toml); otherwise it writes a
# synthetic demo first, so it works on a fresh machine with no ../shared. XREC_SERVE=0 stops before serving.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/xrec ] || bash scripts/install.sh
X=.venv/bin/xrec
OUT=${XREC_OUT:-runs/quickstart}
PROFILE=${XREC_PROFILE:-configs/train-fast.toml}
export XREC_API_KEYS=${XREC_API_KEYS:-dev-key}
if [ -n "${XREC_DATA:-}" ]; then
  MAPPING=$XREC_DATA
else
  $X data demo "$OUT/raw"
  MAPPING="$OUT/raw/mapping.toml"
fi
$X data build "$MAPPING" --out "$OUT/dataset"
$X train "$PROFILE" --dataset "$OUT/dataset" --out "$OUT/model"
BUNDLE=$($X export "$OUT/model/checkpoint.pt" --out "$OUT/bundles" --version v1)
$X bundle verify "$BUNDLE"
echo
echo "dataset: $OUT/dataset   model: $OUT/model   bundle: $BUNDLE"
echo "metrics: $OUT/model/metrics-test.md"
if [ "${XREC_SERVE:-1}" = "0" ]; then exit 0; fi
cat <<EOT

Serving on http://127.0.0.1:8000 (Ctrl-C stops). Try, from another shell:
  curl -s localhost:8000/readyz
  curl -s -X POST localhost:8000/v1/recommend -H 'content-type: application/json' -H 'X-API-Key: ${XREC_API_KEYS%%,*}' \\
       -d '{"person_id": "$(.venv/bin/python -c "import pyarrow.parquet as pq; print(pq.read_table('$BUNDLE/history.parquet', columns=['person']).column(0)[0])")", "platform": "$(.venv/bin/python -c "import json; print(json.load(open('$BUNDLE/manifest.json'))['platforms'][0])")", "k": 5}'
EOT
exec $X serve --bundle "$BUNDLE" --host 127.0.0.1 --port 8000
