-- wrk script of benchmarks/serving.py: POSTs JSON bodies (one per line of a file) to a path, cycling,
-- and prints one machine-readable summary line at the end.
--   wrk -t1 -c32 -d8s -s serving_wrk.lua http://127.0.0.1:PORT -- bodies.jsonl /predict

local requests = {}
local counter = 0
local threads = {}

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
  return requests[(counter % #requests) + 1]
end

function done(summary, latency, _)
  local errors = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests": %d, "duration_us": %d, "status_errors": %d, "socket_errors": %d, "timeouts": %d, '
      .. '"p50_us": %d, "p90_us": %d, "p99_us": %d, "mean_us": %.1f}\n',
    summary.requests, summary.duration, errors.status, errors.connect + errors.read + errors.write, errors.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.mean
  ))
end
