// The gateway's per-API request metrics: plain counters on the data path, turned into
// prom-client's values only when /metrics is read.
import type { Metric, Registry } from "prom-client";

/**
 * One API's figures. A prom-client child's observe() and inc() hash and check their labels on
 * every call; with the status class's label lookup that was ~6,000 instructions per proxied
 * request (callgrind, the gateway's main thread: 94.0k -> 87.8k per request), a few dozen here.
 */
export class ApiFigures {
  /** Responses by status class: index 2 counts 2xx (0 counts requests that got no status). */
  readonly byClass = new Array<number>(10).fill(0);
  /** Durations per bucket (not cumulative); the last counts those above every bound. */
  readonly buckets: number[];
  sum = 0;
  count = 0;

  constructor(
    readonly api: string,
    private readonly bounds: readonly number[],
  ) {
    this.buckets = new Array<number>(bounds.length + 1).fill(0);
  }

  reset(): void {
    this.byClass.fill(0);
    this.buckets.fill(0);
    this.sum = 0;
    this.count = 0;
  }

  observe(status: number, seconds: number): void {
    this.byClass[Math.min(9, Math.max(0, Math.floor(status / 100)))]! += 1;
    const bounds = this.bounds;
    let i = 0;
    while (i < bounds.length && seconds > bounds[i]!) i++;
    this.buckets[i]! += 1;
    this.sum += seconds;
    this.count += 1;
  }
}

/** One sample as the registry prints it: `metricName{labels} value`. */
interface Sample {
  labels: Record<string, string | number>;
  value: number;
  metricName?: string;
}

const REQUESTS = "flotilla_gateway_requests_total";
const DURATION = "flotilla_gateway_request_duration_seconds";

export class RequestMetrics {
  private readonly byApi = new Map<string, ApiFigures>();

  /** `bounds`: the duration histogram's bucket bounds in seconds, ascending. */
  constructor(private readonly bounds: readonly number[]) {}

  /** The figures of one API (callers keep them per route, so a request does no lookup). */
  forApi(api: string): ApiFigures {
    let figures = this.byApi.get(api);
    if (!figures) {
      figures = new ApiFigures(api, this.bounds);
      this.byApi.set(api, figures);
    }
    return figures;
  }

  /** Adds the request counter (by API and status class) and the duration histogram (by API). */
  register(registry: Registry): void {
    const requests = (): Sample[] =>
      [...this.byApi.values()].flatMap((f) =>
        f.byClass.flatMap((value, cls) =>
          value === 0 ? [] : [{ labels: { api: f.api, status: `${cls}xx` }, value }],
        ),
      );
    const duration = (): Sample[] => {
      const values: Sample[] = [];
      for (const f of this.byApi.values()) {
        if (f.count === 0) continue; // As prom-client: no series before a first observation.
        let cumulative = 0;
        for (const [i, bound] of this.bounds.entries()) {
          cumulative += f.buckets[i]!;
          values.push({
            labels: { le: bound, api: f.api },
            value: cumulative,
            metricName: `${DURATION}_bucket`,
          });
        }
        values.push(
          { labels: { le: "+Inf", api: f.api }, value: f.count, metricName: `${DURATION}_bucket` },
          { labels: { api: f.api }, value: f.sum, metricName: `${DURATION}_sum` },
          { labels: { api: f.api }, value: f.count, metricName: `${DURATION}_count` },
        );
      }
      return values;
    };
    // What a registry uses of a metric: its name, help and type (OpenMetrics names a counter's
    // samples by its type), get() and reset(). prom-client's types ask for a whole Metric.
    const metrics = [
      {
        name: REQUESTS,
        help: "Requests through the gateway, by API and status class.",
        type: "counter",
        samples: requests,
      },
      {
        name: DURATION,
        help: "Time from request to response end, by API.",
        type: "histogram",
        samples: duration,
      },
    ];
    for (const { samples, ...m } of metrics)
      registry.registerMetric({
        ...m,
        get: async () => ({ ...m, values: samples(), aggregator: "sum" }),
        // The two share the figures: either reset zeroes both (a registry resets every metric).
        reset: () => {
          for (const f of this.byApi.values()) f.reset();
        },
      } as unknown as Metric<string>);
  }
}
