// Open-loop load at a constant rate, for latency at a given load. Requests start on a schedule
// (every millisecond, as many as are due) whatever the answers, and each one's latency counts from
// when it was due, not from when a connection was free, so a server that falls behind is charged
// for the wait (no coordinated omission). autocannon's overallRate is not this: each connection
// sends its share of a second back to back at the start of the second, then idles, so its latency
// "at 3,000 req/s" is its latency flat out for the first part of every second.
import { Agent, request } from "node:http";
import { round } from "./common.mjs";

/** A request that has no answer after this long counts as an error (autocannon's default). */
const TIMEOUT_MS = 10_000;

/**
 * Sends `ratePerS` requests a second for `warmupS` (answers discarded: this process's HTTP client
 * warms up and opens its connections; the first seconds of a cold client put tens of ms into the
 * p99 of even a bare Fastify server), then for `durationS`, over at most `connections` keep-alive
 * connections, and resolves when every measured request has its answer (or failed), with the
 * latency distribution (ms, from when each request was due) and what the server achieved.
 */
export async function constantRate({
  url,
  method = "POST",
  headers = {},
  body = "",
  ratePerS,
  durationS,
  warmupS = 2,
  connections,
}) {
  const agent = new Agent({ keepAlive: true, maxSockets: connections });
  try {
    const shape = { url, method, headers, body, ratePerS, agent };
    if (warmupS > 0) await schedule({ ...shape, durationS: warmupS });
    return await schedule({ ...shape, durationS });
  } finally {
    agent.destroy();
  }
}

function schedule({ url, method, headers, body, ratePerS, durationS, agent }) {
  const target = new URL(url);
  const payload = Buffer.from(body);
  const total = Math.round(ratePerS * durationS);
  const latencies = [];
  const statusCodes = {};
  let sent = 0;
  let finished = 0;
  let errors = 0;
  let non2xx = 0;
  let lastAt = 0;
  const startedAt = performance.now();
  if (total === 0) return Promise.resolve({ offeredRps: ratePerS, requests: 0 });
  return new Promise((resolve) => {
    const complete = () => {
      finished++;
      lastAt = performance.now();
      if (finished < total) return;
      latencies.sort((a, b) => a - b);
      const at = (p) =>
        latencies.length
          ? round(latencies[Math.min(latencies.length - 1, Math.ceil(p * latencies.length) - 1)])
          : null;
      resolve({
        offeredRps: ratePerS,
        // Answers over the time from the first request until the last answer: below the offered
        // rate when the server fell behind (its backlog drains after the schedule ends).
        rps: round(latencies.length / ((lastAt - startedAt) / 1000), 1),
        p50Ms: at(0.5),
        p90Ms: at(0.9),
        p99Ms: at(0.99),
        maxMs: at(1),
        requests: total,
        non2xx,
        errors,
        statusCodes,
      });
    };
    const send = (dueAt) => {
      let counted = false;
      /** Counts this request once: its status when answered whole, else an error. */
      const settle = (status) => {
        if (counted) return;
        counted = true;
        if (status === undefined) errors++;
        else {
          statusCodes[status] = (statusCodes[status] ?? 0) + 1;
          if (status < 200 || status > 299) non2xx++;
          else latencies.push(performance.now() - dueAt);
        }
        complete();
      };
      const req = request(
        {
          agent,
          host: target.hostname,
          port: target.port,
          path: `${target.pathname}${target.search}`,
          method,
          headers: { ...headers, "content-length": payload.length },
          timeout: TIMEOUT_MS,
        },
        (res) => {
          res.resume();
          res.once("end", () => settle(res.statusCode ?? 0));
          res.once("close", () => settle(undefined));
        },
      );
      req.once("timeout", () => req.destroy(new Error("timeout")));
      req.once("error", () => settle(undefined));
      req.end(payload);
    };
    const tick = () => {
      const elapsedS = (performance.now() - startedAt) / 1000;
      const due = Math.min(total, Math.floor(elapsedS * ratePerS) + 1);
      while (sent < due) {
        send(startedAt + (sent * 1000) / ratePerS);
        sent++;
      }
      if (sent < total) setTimeout(tick, 1);
    };
    tick();
  });
}
