-- wrk's figures for one slice of load, as one JSON line: counts, errors, and the latency
-- distribution as 1,000 quantiles (the 0.05th, 0.15th, ... 99.95th percentiles, in us), so the
-- slices of one target can be merged (bench/lib/wrk.mjs).
done = function(summary, latency, requests)
  local q = {}
  for i = 0, 999 do
    q[#q + 1] = tostring(latency:percentile((i + 0.5) / 10))
  end
  local e = summary.errors
  io.write(string.format(
    '{"requests":%d,"durationUs":%d,"connectErrors":%d,"readErrors":%d,"writeErrors":%d,"timeouts":%d,"status4xx5xx":%d,"meanUs":%.1f,"maxUs":%d,"quantilesUs":[%s]}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.timeout, e.status,
    latency.mean, latency.max, table.concat(q, ",")))
end
