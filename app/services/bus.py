"""Pub/sub between replicas: "this person's profile changed", "these items changed".

Each replica keeps ranked lists in process; without this, events ingested by one replica would leave
the others serving stale lists until their cache TTL runs out. Messages are hints, not data: a replica
that misses some (Redis restarted, listener reconnecting) drops its whole ranked cache on reconnect.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable

import redis

from app.services.redis_store import Keys, RedisGuard, RedisUnavailable

log = logging.getLogger(__name__)

Handler = Callable[[dict], None]


class Bus:
    def __init__(self, redis_url: str, keys: Keys, guard: RedisGuard, connect_timeout: float) -> None:
        self.keys = keys
        self.guard = guard
        self.origin = uuid.uuid4().hex
        self.handlers: dict[str, Handler] = {}
        self.on_reconnect: Callable[[], None] | None = None
        # Every time the subscription is confirmed (first time included; after `on_reconnect`), and every
        # time it is lost: from then on until the next confirmation, messages may be missed.
        self.on_subscribed: Callable[[], None] | None = None
        self.on_lost: Callable[[], None] | None = None
        self._url = redis_url
        self._connect_timeout = connect_timeout
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def publish(self, kind: str, **payload: object) -> None:
        message = json.dumps({"o": self.origin, "t": kind, **payload}, separators=(",", ":"))
        # Unavailable: nothing to do, other replicas reset their caches when they reconnect.
        with contextlib.suppress(RedisUnavailable):
            self.guard.run(lambda r: r.publish(self.keys.bus, message))

    def start(self) -> None:
        self._thread = threading.Thread(target=self._listen, name="xrec-bus", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=3)

    def _listen(self) -> None:
        backoff = 0.5
        first = True
        while not self._stop.is_set():
            client = redis.Redis.from_url(self._url, socket_connect_timeout=self._connect_timeout,
                                          socket_timeout=5.0)
            pubsub = client.pubsub()  # subscribe confirmations too: `_confirmed` waits for one
            try:
                pubsub.subscribe(self.keys.bus)
                _confirmed(pubsub)
                if not first and self.on_reconnect is not None:
                    self.on_reconnect()
                if self.on_subscribed is not None:
                    self.on_subscribed()
                first, backoff = False, 0.5
                while not self._stop.is_set():
                    msg = pubsub.get_message(timeout=0.5)
                    if msg is not None and msg.get("type") == "message":
                        self._dispatch(msg["data"])
            except (redis.ConnectionError, redis.TimeoutError, OSError) as e:
                first = False  # whatever came in meanwhile was missed
                if self.on_lost is not None:
                    self.on_lost()
                # Tell the guard at once: warm answers (which never touch Redis) report `degraded` now,
                # not only after the next cold request fails.
                self.guard.report_failure(e)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 10.0)
            finally:
                try:
                    pubsub.close()
                    client.close()
                except Exception:  # closing a broken connection may fail again; nothing left to do
                    pass

    def _dispatch(self, data: bytes) -> None:
        try:
            message = json.loads(data)
        except ValueError:
            return
        if message.get("o") == self.origin:
            return
        handler = self.handlers.get(message.get("t", ""))
        if handler is not None:
            try:
                handler(message)
            except Exception:  # one bad message must not stop the listener
                log.exception("bus handler for %r failed", message.get("t"))


def _confirmed(pubsub: redis.client.PubSub, timeout_s: float = 5.0) -> None:
    """Wait for Redis to confirm the subscription: only from then on is no published message missed."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        msg = pubsub.get_message(timeout=0.5)
        if msg is not None and msg.get("type") == "subscribe":
            return
    raise redis.TimeoutError("no subscription confirmation")
