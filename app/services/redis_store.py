"""Redis: key layout, the Lua scripts, and a guard that turns an unreachable Redis into a fast fallback.

Keys (prefix = XREC_REDIS_PREFIX, default "xrec"):
  {prefix}:{model_version}:profile:{person}  hash seq, data: the person's profile as this model sees it
                                             (history + a user vector per platform); TTL profile_ttl_s
  {prefix}:events:{person}                   list: the person's events since the bundle, any model version
  {prefix}:seq:{person}                      counter: events appended so far (the profile's version)
  {prefix}:evented                           set: every person with events since the bundle (see
                                             profiles.EventedPersons); {prefix}:evented:complete marks
                                             that it also holds persons of events ingested before it existed
  {prefix}:event:{event_id}                  idempotency marker, TTL event_ttl_s
  {prefix}:stream:events                     stream: every new event, pseudonymous (for other consumers)
  {prefix}:catalog                           hash item_id → latest catalog change (upsert/delete)
  {prefix}:replay:{file}                     bytes of an event-log file already applied to Redis
  {prefix}:replay-acked:{file}               sorted set: applied byte ranges beyond a gap (see ADVANCE_LUA)
  {prefix}:bus                               pub/sub: invalidations between replicas
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

import redis
from redis.backoff import NoBackoff
from redis.commands.core import Script
from redis.exceptions import NoScriptError
from redis.retry import Retry

from app.core.config import Settings
from app.core.metrics import Metrics

log = logging.getLogger(__name__)
T = TypeVar("T")

# Append one event unless its id was seen: marker, history list (trimmed), counter, the person in the set of
# persons with events, stream. Returns the person's new sequence number, or 0 for a duplicate.
INGEST_LUA = """
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[3]) then return 0 end
redis.call('RPUSH', KEYS[2], ARGV[1])
redis.call('LTRIM', KEYS[2], -tonumber(ARGV[2]), -1)
redis.call('EXPIRE', KEYS[2], ARGV[3])
local s = redis.call('INCR', KEYS[3])
redis.call('EXPIRE', KEYS[3], ARGV[3])
redis.call('SADD', KEYS[5], ARGV[5])
redis.call('EXPIRE', KEYS[5], ARGV[3])
redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[4], '*', unpack(ARGV, 6))
return s
"""

# Everything a request needs to know about one person, in one call: {seq, profile data, nil} when the stored
# profile includes every event appended so far, else {seq, nil, the event list} to build it from.
READ_PROFILE_LUA = """
local seq = tonumber(redis.call('GET', KEYS[3]) or '0')
local p = redis.call('HMGET', KEYS[1], 'seq', 'data')
if p[2] and tonumber(p[1]) >= seq then return {seq, p[2], false} end
return {seq, false, redis.call('LRANGE', KEYS[2], 0, -1)}
"""

# Write a profile unless a newer one (built from more events) is already there: two replicas building
# the same person's profile at once must not let the older one win.
PUT_PROFILE_LUA = """
local cur = redis.call('HGET', KEYS[1], 'seq')
if cur and tonumber(cur) > tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'seq', ARGV[1], 'data', ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[3])
return 1
"""

# Acknowledge that bytes [start, end) of a log file are applied to Redis, and move the file's replay
# offset to the end of the contiguous applied prefix. Batches finish in any order: one that ends beyond a
# gap (an earlier batch still in flight, or never applied) waits in the sorted set KEYS[2] (score start,
# member "start:end") until the gap is acknowledged, so the offset never skips an unapplied byte, never
# goes backwards, and reaches the furthest offset once every batch before it is in. Returns the offset.
ADVANCE_LUA = """
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
local s, e = tonumber(ARGV[1]), tonumber(ARGV[2])
if e <= cur then return cur end
if s > cur then
  redis.call('ZADD', KEYS[2], s, ARGV[1] .. ':' .. ARGV[2])
  redis.call('EXPIRE', KEYS[2], ARGV[3])
  return cur
end
cur = e
while true do
  local upto = cur
  local ready = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', upto)
  if #ready == 0 then break end
  for _, m in ipairs(ready) do
    local stop = tonumber(string.match(m, ':(%d+)$'))
    if stop > cur then cur = stop end
  end
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', upto)
end
redis.call('SET', KEYS[1], string.format('%d', cur))
return cur
"""


def run_scripts(r: redis.Redis, calls: Sequence[tuple[Script, Sequence[str], Sequence[object]]]) -> list:
    """Script calls (script, keys, args) in one pipeline: one round trip. EVALSHA directly, loading a script
    only when Redis answers that it does not have it (a pipeline of `Script` objects would first ask
    SCRIPT EXISTS, a second round trip every time)."""
    for attempt in range(2):
        pipe = r.pipeline(transaction=False)
        for script, keys, args in calls:
            pipe.evalsha(script.sha, len(keys), *keys, *args)
        out = pipe.execute(raise_on_error=False)
        missing = {id(s): s for (s, _, _), res in zip(calls, out, strict=True) if isinstance(res, NoScriptError)}
        if not missing or attempt:
            break
        for s in missing.values():  # Redis restarted (or never saw them): load, then run the calls again
            r.script_load(s.script)
    for res in out:
        if isinstance(res, Exception):
            raise res
    return out


class Keys:
    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.stream = f"{prefix}:stream:events"
        self.catalog = f"{prefix}:catalog"
        self.bus = f"{prefix}:bus"
        self.evented = f"{prefix}:evented"
        self.evented_complete = f"{prefix}:evented:complete"

    def profile(self, model_version: str, person: str) -> str:
        return f"{self.prefix}:{model_version}:profile:{person}"

    def events(self, person: str) -> str:
        return f"{self.prefix}:events:{person}"

    def seq(self, person: str) -> str:
        return f"{self.prefix}:seq:{person}"

    def event_id(self, event_id: str) -> str:
        return f"{self.prefix}:event:{event_id}"

    def replay(self, file_name: str) -> str:
        return f"{self.prefix}:replay:{file_name}"

    def replay_acked(self, file_name: str) -> str:
        return f"{self.prefix}:replay-acked:{file_name}"


class RedisUnavailable(Exception):
    """Redis is down or was down a moment ago (backing off): use the in-process fallback."""


def make_client(settings: Settings) -> redis.Redis:
    # No client-side retries: one short timeout, then the guard backs off and the caller falls back.
    return redis.Redis.from_url(settings.redis_url, socket_timeout=settings.redis_socket_timeout_s,
                                socket_connect_timeout=settings.redis_connect_timeout_s,
                                retry=Retry(NoBackoff(), 0), retry_on_timeout=False,
                                health_check_interval=0, decode_responses=False)


class RedisGuard:
    """Runs Redis calls; after a connection error or timeout, refuses calls for a backoff period (doubling
    up to a maximum) so a dead Redis costs requests nothing. The first call after the period probes it;
    when it succeeds, `on_recover` callbacks run in a background thread (replay, cache reset)."""

    _ERRORS = (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError, OSError)

    def __init__(self, client: redis.Redis, keys: Keys, settings: Settings, metrics: Metrics) -> None:
        self.client = client
        self.keys = keys
        self.metrics = metrics
        self.backoff_min = settings.redis_backoff_min_s
        self.backoff_max = settings.redis_backoff_max_s
        self._backoff = self.backoff_min
        self._retry_at = 0.0
        self.healthy = True
        self.on_recover: list[Callable[[], None]] = []
        self._lock = threading.Lock()
        self.ingest = client.register_script(INGEST_LUA)
        self.put_profile = client.register_script(PUT_PROFILE_LUA)
        self.read_profile = client.register_script(READ_PROFILE_LUA)
        self.advance = client.register_script(ADVANCE_LUA)
        metrics.redis_up.set(1)

    @property
    def available(self) -> bool:
        """Worth trying now (healthy, or the backoff period is over)."""
        return self.healthy or time.monotonic() >= self._retry_at

    def run(self, fn: Callable[[redis.Redis], T]) -> T:
        if not self.available:
            raise RedisUnavailable("backing off")
        try:
            out = fn(self.client)
        except self._ERRORS as e:
            self._failed(e)
            raise RedisUnavailable(type(e).__name__) from e
        if not self.healthy:
            self._recovered()
        return out

    def load_scripts(self) -> None:
        """Load the Lua scripts into Redis now, so the first requests do not pay for it. Raises
        RedisUnavailable."""
        scripts = (self.ingest, self.put_profile, self.read_profile, self.advance)
        self.run(lambda r: [r.script_load(s.script) for s in scripts])

    def ping(self) -> bool:
        try:
            self.run(lambda r: r.ping())
            return True
        except RedisUnavailable:
            return False

    def report_failure(self, error: Exception) -> None:
        """A failure seen outside `run` (the bus connection)."""
        self._failed(error)

    def _failed(self, error: Exception) -> None:
        self.metrics.redis_errors.inc()
        with self._lock:
            if self.healthy:
                log.warning("Redis unavailable (%s): serving from memory and the bundle snapshot",
                            type(error).__name__)
                self._backoff = self.backoff_min
            else:
                self._backoff = min(self._backoff * 2, self.backoff_max)
            self.healthy = False
            self._retry_at = time.monotonic() + self._backoff
        self.metrics.redis_up.set(0)

    def _recovered(self) -> None:
        with self._lock:
            if self.healthy:
                return
            self.healthy = True
            self._backoff = self.backoff_min
        self.metrics.redis_up.set(1)
        log.warning("Redis is back")
        for fn in self.on_recover:
            threading.Thread(target=fn, name="xrec-redis-recover", daemon=True).start()
