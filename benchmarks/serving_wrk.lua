-- wrk script of benchmarks/serving.py: POSTs JSON bodies (one per line of a file) to a path, cycling,
-- times every request itself and prints one machine-readable summary line at the end.
--   wrk -t32 -c32 -d8s -s serving_wrk.lua http://127.0.0.1:PORT -- bodies.jsonl /predict
--
-- Run it with as many threads as connections: each thread then has one connection, so its requests
-- and responses alternate and `response()` closes the request `request()` opened. Latency is taken
-- with CLOCK_MONOTONIC through LuaJIT's FFI because wrk 4.1's own latency histogram was inconsistent
-- with its own request counts on the benchmark VM (a 10 ms mean at 1,900 req/s on one connection).

local ffi = require("ffi")
ffi.cdef([[
typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
int clock_gettime(int clock_id, bench_timespec *tp);
]])
local CLOCK_MONOTONIC = 1
local clock = ffi.new("bench_timespec")

local function now_us()
  ffi.C.clock_gettime(CLOCK_MONOTONIC, clock)
  return tonumber(clock.tv_sec) * 1e6 + tonumber(clock.tv_nsec) / 1e3
end

local requests = {}
local counter = 0
local started = nil
local threads = {}
latencies = {} -- per thread, read by done() through thread:get
non_2xx = 0

function setup(thread)
  thread:set("id", #threads)
  table.insert(threads, thread)
end

function init(args)
  local bodies, path = args[1], args[2]
  local headers = { ["Content-Type"] = "application/json" }
  for line in io.lines(bodies) do
    requests[#requests + 1] = wrk.format("POST", path, headers, line)
  end
  counter = (id or 0) * 7919 -- threads start at different bodies
end

function request()
  counter = counter + 1
  started = now_us()
  return requests[(counter % #requests) + 1]
end

function response(status, _, _)
  if started ~= nil then
    latencies[#latencies + 1] = now_us() - started
    started = nil
  end
  if status < 200 or status > 299 then
    non_2xx = non_2xx + 1
  end
end

function done(summary, _, _)
  local all, statuses = {}, 0
  for _, thread in ipairs(threads) do
    for _, value in ipairs(thread:get("latencies")) do
      all[#all + 1] = value
    end
    statuses = statuses + thread:get("non_2xx")
  end
  table.sort(all)
  local function at(q)
    if #all == 0 then
      return 0
    end
    return all[math.min(#all, math.floor(q * #all) + 1)]
  end
  local sum = 0
  for _, value in ipairs(all) do
    sum = sum + value
  end
  local errors = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests": %d, "duration_us": %d, "timed": %d, "non_2xx": %d, "socket_errors": %d, '
      .. '"timeouts": %d, "p50_us": %.1f, "p90_us": %.1f, "p99_us": %.1f, "max_us": %.1f, "mean_us": %.1f}\n',
    summary.requests, summary.duration, #all, statuses, errors.connect + errors.read + errors.write,
    errors.timeout, at(0.5), at(0.9), at(0.99), at(1.0), #all > 0 and sum / #all or 0
  ))
end
