"""Service tests: the real Redis on 127.0.0.1:6379 (a key prefix per test, removed afterwards) and the
tiny fixture bundle, built once per session."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient

from app.core.config import Settings
from app.main import create_app
from tests.fixtures.tiny_bundle import TEST_SALT, build_tiny_bundle

REDIS_URL = "redis://127.0.0.1:6379/0"
API_KEY = "test-key-1"
OTHER_KEY = "test-key-2"
AUTH = {"X-API-Key": API_KEY}


@pytest.fixture(scope="session")
def redis_client() -> redis.Redis:
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.ConnectionError:
        pytest.fail("service tests need Redis on 127.0.0.1:6379 (see .ci/run)")
    return client


@pytest.fixture(scope="session")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_bundle(tmp_path_factory.mktemp("bundles") / "tiny-0", seed=0)


@pytest.fixture(scope="session")
def bundle_dir_v2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_bundle(tmp_path_factory.mktemp("bundles") / "tiny-1", seed=1)


@pytest.fixture
def redis_prefix(redis_client: redis.Redis) -> Iterator[str]:
    prefix = f"xrectest-{uuid.uuid4().hex[:12]}"
    yield prefix
    keys = list(redis_client.scan_iter(f"{prefix}:*", count=1000))
    if keys:
        redis_client.delete(*keys)


def make_settings(bundle_dir: Path | None, prefix: str, events_dir: Path, **overrides: object) -> Settings:
    values: dict[str, object] = dict(
        bundle_dir=bundle_dir, redis_url=REDIS_URL, redis_prefix=prefix, events_dir=events_dir,
        api_keys=[API_KEY, OTHER_KEY], id_salt=TEST_SALT, redis_backoff_min_s=0.05, redis_backoff_max_s=0.2,
        ort_intra_op_threads=1)
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[arg-type]


@pytest.fixture
def settings(bundle_dir: Path, redis_prefix: str, tmp_path: Path) -> Settings:
    return make_settings(bundle_dir, redis_prefix, tmp_path / "events")


@contextlib.contextmanager
def running(settings: Settings, key: str | None = API_KEY) -> Iterator[TestClient]:
    """A service instance (lifespan run) on these settings. Its client sends `key` as X-API-Key on every
    request, as the backends that call the service do (reads need a key by default); `keyless` for none."""
    with TestClient(create_app(settings), headers={"X-API-Key": key} if key else None) as client:
        yield client


@contextlib.contextmanager
def keyless(client: TestClient) -> Iterator[TestClient]:
    """The same client without its X-API-Key header for the duration."""
    key = client.headers.pop("X-API-Key", None)
    try:
        yield client
    finally:
        if key is not None:
            client.headers["X-API-Key"] = key


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with running(settings) as c:
        yield c


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def private_redis(port: int) -> Iterator[subprocess.Popen]:
    """A throwaway redis-server (no persistence) that a test may stop and start; killed by its pid."""
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.skip("redis-server binary not found")
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = redis.Redis(port=port)
    for _ in range(100):
        try:
            client.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.05)
    try:
        yield proc
    finally:
        proc.terminate()
        proc.wait(timeout=5)


@contextlib.contextmanager
def serving(settings: Settings) -> Iterator[int]:
    """The app under uvicorn (httptools, as `xrec serve` runs it) in a thread on a free loopback port;
    yields the port."""
    import threading
    import time

    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning",
                                           http="httptools"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            assert time.monotonic() < deadline and thread.is_alive(), "server did not start"
            time.sleep(0.05)
        yield port
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def wait_for(predicate, timeout: float = 5.0, step: float = 0.02) -> bool:
    """Poll `predicate` until it holds (True) or `timeout` seconds pass (False)."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return False
