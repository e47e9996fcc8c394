"""The reliability suite (issue 13): schemathesis with every check against `xrec serve` on the fixture
bundle, through real HTTP, must report 0 failures and 0 errors; the server must log nothing but JSON lines
and no error. Bounded (a fixed seed, XREC_ST_MAX_EXAMPLES examples per operation and phase, default 50):
about 20 s on 2 cores. The command, its settings and the figures: docs/reliability.md."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.app.conftest import API_KEY, free_port
from tests.fixtures.tiny_bundle import TEST_SALT

ROOT = Path(__file__).resolve().parents[2]
CONFIG = Path(__file__).with_name("schemathesis.toml")
MAX_EXAMPLES = int(os.environ.get("XREC_ST_MAX_EXAMPLES", "50"))
SEED = int(os.environ.get("XREC_ST_SEED", "1"))


def schemathesis_cli() -> str:
    exe = Path(sys.executable).with_name("st")
    found = str(exe) if exe.is_file() else shutil.which("st")
    if found is None:
        pytest.fail("schemathesis is not installed: pip install -e '.[dev]'")
    return found


def test_schemathesis_all_checks_find_nothing(bundle_dir: Path, redis_prefix: str, tmp_path: Path) -> None:
    st = schemathesis_cli()
    port = free_port()
    env = {**os.environ, "XREC_ID_SALT": TEST_SALT, "XREC_REDIS_PREFIX": redis_prefix, "XREC_API_KEYS": API_KEY,
           "XREC_EVENTS_DIR": str(tmp_path / "events"), "PYTHONUNBUFFERED": "1"}
    for k in [k for k in env if k.startswith("XREC_") and k not in ("XREC_ID_SALT", "XREC_REDIS_PREFIX",
                                                                       "XREC_API_KEYS", "XREC_EVENTS_DIR")]:
        env.pop(k)  # production defaults otherwise (reads need a key, JSON logs, ...)
    log_path = tmp_path / "server.log"
    with log_path.open("w") as log:
        server = subprocess.Popen([sys.executable, "-m", "xrec.cli", "serve", "--bundle", str(bundle_dir),
                                   "--port", str(port), "--log-level", "info"], cwd=ROOT, env=env, stdout=log,
                                  stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert server.poll() is None and time.monotonic() < deadline, log_path.read_text()
            try:
                if httpx.get(f"{url}/readyz", timeout=1.0).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        started = time.monotonic()
        run = subprocess.run([st, "--config-file", str(CONFIG), "run", f"{url}/openapi.json", "--checks", "all",
                              "-H", f"X-API-Key: {API_KEY}", "--max-examples", str(MAX_EXAMPLES), "--seed", str(SEED),
                              "--workers", "1", "--request-timeout", "10", "--no-color", "--report", "json",
                              "--report-dir", str(tmp_path / "report")],
                             cwd=tmp_path, capture_output=True, text=True, timeout=600)
        seconds = time.monotonic() - started
    finally:
        server.terminate()
        server.wait(timeout=10)
    (report_path,) = (tmp_path / "report").glob("*.json")
    report = json.loads(report_path.read_text())
    print(f"\nschemathesis {report['schemathesis_version']}: {report['operations']['tested']} operations, "
          f"{report['test_cases']['generated']} test cases, {report['test_cases']['with_failures']} with failures, "
          f"{len(report['errors'])} errors, {seconds:.1f}s (seed {SEED}, {MAX_EXAMPLES} examples)")
    assert run.returncode == 0 and report["exit_code"] == 0, run.stdout[-20000:]
    assert report["failures"] == [] and report["errors"] == [], run.stdout[-20000:]
    assert report["operations"]["tested"] == report["operations"]["total"] >= 10
    assert report["test_cases"]["generated"] >= 10 * MAX_EXAMPLES
    assert {report["phases"][p]["status"] for p in ("coverage", "fuzzing")} == {"success"}
    # The server said nothing but JSON lines, and nothing at ERROR: no traceback behind a 4xx either.
    lines = [line for line in log_path.read_text().splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]
    assert records and not [r for r in records if r["level"] in ("ERROR", "CRITICAL")], lines
