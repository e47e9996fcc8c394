#!/usr/bin/env bash
# The tests, from nothing: install (scripts/install.sh), make sure Redis answers (installed and started when
# missing), Chromium for the operator page's browser test, then lint (ruff, hadolint) and pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh

apt_install() {  # Debian packages, only when missing (CI and fresh machines run as root)
  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@"
}
if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
  command -v redis-server >/dev/null 2>&1 || apt_install redis-server
  redis-server --daemonize yes --port 6379 --save "" --appendonly no
  for _ in $(seq 50); do redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 && break; sleep 0.2; done
fi
redis-cli -h 127.0.0.1 -p 6379 ping
# tests/app/test_ui.py drives the operator page (/ui) in Debian's Chromium through Playwright (no browser
# download); it skips without /usr/bin/chromium.
[ -x /usr/bin/chromium ] || apt_install chromium

.venv/bin/ruff check .
.venv/bin/hadolint Dockerfile Dockerfile.gpu
.venv/bin/python -m pytest -q "$@"
