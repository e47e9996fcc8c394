#!/usr/bin/env bash
# Every figure of docs/benchmarks.md for one bundle, in about 20 minutes on 2 cores:
#
#   bash bench/run_all.sh bundles/fk-v1            # figures and logs in runs/bench/, tables in runs/bench/report.md
#
# 1. bench/serve.py on the real catalog, alone on the machine.
# 2. bench/serve.py on the catalog grown to ITEMS, and bench/index.py, overlapped: the server's load is
#    dominated by single-threaded HNSW builds, and so is index.py; each gets a core. The server then waits
#    (--hold-while) until index.py is done, so none of its measured runs shares the machine.
# Every step has a time limit; an interrupted run stops its server (serve.py handles SIGTERM).
set -euo pipefail
cd "$(dirname "$0")/.."
BUNDLE=${1:?usage: bench/run_all.sh BUNDLE}
ITEMS=${ITEMS:-1000000}
DURATION=${DURATION:-10}
SERVE_ARGS=${SERVE_ARGS:-}   # smoke tests on small bundles: e.g. "--warm-persons 1000 --cold-requests 500"
PY=.venv/bin/python
OUT=runs/bench
mkdir -p "$OUT"
big=$((ITEMS / 1000))k

# shellcheck disable=SC2086  # SERVE_ARGS is a list of options
timeout 900 "$PY" bench/serve.py --bundle "$BUNDLE" --duration "$DURATION" --profile --label real \
    --json "$OUT/serve-real.json" $SERVE_ARGS 2>&1 | tee "$OUT/serve-real.log" || echo "serve.py (real) failed"

hold="$OUT/hold-$$"
touch "$hold"
timeout 2400 "$PY" bench/serve.py --bundle "$BUNDLE" --items "$ITEMS" --duration "$DURATION" --profile \
    --cold-requests 3000 --hold-while "$hold" --hold-max 1800 --label "$big" --json "$OUT/serve-$big.json" \
    $SERVE_ARGS > "$OUT/serve-$big.log" 2>&1 &
serve_pid=$!
trap 'rm -f "$hold"; kill "$serve_pid" 2>/dev/null || true' EXIT
timeout 1800 "$PY" bench/index.py --bundle "$BUNDLE" --sizes "real,$ITEMS" --queries 1000 --latency-queries 300 \
    --json "$OUT/index.json" 2>&1 | tee "$OUT/index.log" || echo "index.py failed or timed out (see $OUT/index.log)"
rm -f "$hold"
wait "$serve_pid" || echo "serve.py ($big) failed (see $OUT/serve-$big.log)"
cat "$OUT/serve-$big.log"
"$PY" bench/report.py --serve "$OUT/serve-real.json" "$OUT/serve-$big.json" --index "$OUT/index.json" \
    --out "$OUT/report.md"
echo "tables: $OUT/report.md"
