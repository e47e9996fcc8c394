-- wrk script for bench/serve.py: POST /v1/recommend, one body per line of a file (one person each).
--
--   wrk -t1 -cC -dDs -s bench/recommend.lua http://127.0.0.1:PORT -- BODIES LIMIT MODE KEY
--
-- BODIES: file of JSON bodies; LIMIT: stop after this many responses (the run is bounded by count as well
-- as by wrk's -d); MODE: "cycle" (warm: the same persons again and again) or "once" (cold: every request a
-- person not asked before; serve.py passes LIMIT <= lines - connections so the requests still in flight
-- when the limit is reached are fresh persons too). KEY: the X-API-Key to send (reads need one by default).
-- One wrk thread only: a single thread is far from saturated at these rates, and it keeps the generator
-- on one core so the server gets the other.

local requests = {}
local n, idx, count, limit, cycle = 0, 0, 0, 0, true
hits, misses, degraded, cold_start = 0, 0, 0, 0

function init(args)
  local headers = { ["Content-Type"] = "application/json", ["X-API-Key"] = args[4] }
  for line in io.lines(args[1]) do
    n = n + 1
    -- pre-formatted: request() then does no string work on the hot path
    requests[n] = wrk.format("POST", "/v1/recommend", headers, line)
  end
  limit = tonumber(args[2])
  cycle = args[3] ~= "once"
end

function request()
  idx = idx + 1
  if idx > n then
    idx = cycle and 1 or n
  end
  return requests[idx]
end

function response(status, headers, body)
  count = count + 1
  if status == 200 then
    -- the service says which path answered: hit = ranked-list cache (warm), miss = computed (cold)
    if string.find(body, '"cache":"hit"', 1, true) then
      hits = hits + 1
    elseif string.find(body, '"cache":"miss"', 1, true) then
      misses = misses + 1
    else
      degraded = degraded + 1
    end
    if string.find(body, '"cold_start":true', 1, true) then
      cold_start = cold_start + 1
    end
  end
  if count == limit then
    wrk.thread:stop()
    -- wrk itself would idle until -d ends: serve.py reads this line and sends SIGINT, which ends wrk at
    -- once with the summary of what was done (its duration is then the real one)
    io.write("WRK_LIMIT\n")
    io.flush()
  end
end

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function done(summary, latency, requests)
  local h, m, d, c = 0, 0, 0, 0
  for _, t in ipairs(threads) do
    h = h + t:get("hits")
    m = m + t:get("misses")
    d = d + t:get("degraded")
    c = c + t:get("cold_start")
  end
  local e = summary.errors
  io.write(string.format(
    'WRK_RESULT {"requests":%d,"duration_us":%d,"bytes":%d,"err_connect":%d,"err_read":%d,"err_write":%d,' ..
    '"err_status":%d,"err_timeout":%d,"p50_us":%d,"p90_us":%d,"p95_us":%d,"p99_us":%d,"p999_us":%d,' ..
    '"max_us":%d,"mean_us":%.1f,"hits":%d,"misses":%d,"degraded":%d,"cold_start":%d}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(95), latency:percentile(99),
    latency:percentile(99.9), latency.max, latency.mean, h, m, d, c))
end
