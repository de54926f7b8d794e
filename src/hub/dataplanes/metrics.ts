// Prometheus metrics of the data-plane controller, registered on the hub's registry.
import { createRequire } from "node:module";
import type { Registry } from "prom-client";
import { METRIC_PREFIX } from "../../shared/index.js";
import type { ConvergeReport } from "./controller.js";

/** Returns the controller's onConverge callback that records each converge. */
export function dataPlaneMetrics(registry: Registry): (report: ConvergeReport) => void {
  const { Counter, Histogram } = createRequire(import.meta.url)(
    "prom-client",
  ) as typeof import("prom-client");
  const converges = new Counter({
    name: `${METRIC_PREFIX}dataplane_converges_total`,
    help: "Data-plane converges that ran a provisioner, by outcome (ok, failed: the run failed as a whole).",
    labelNames: ["outcome"],
    registers: [registry],
  });
  const seconds = new Histogram({
    name: `${METRIC_PREFIX}dataplane_converge_seconds`,
    help: "One converge, from the claim to the results recorded (the provisioner's run included).",
    labelNames: ["outcome"],
    // From 10 ms (the local provisioner, 500 links) to 30 min (a slow Terraform apply).
    buckets: [0.01, 0.05, 0.1, 0.5, 1, 5, 30, 120, 600, 1800],
    registers: [registry],
  });
  const discarded = new Counter({
    name: `${METRIC_PREFIX}dataplane_results_discarded_total`,
    help: "Provisioner results dropped because their link moved to a newer generation (or went) meanwhile.",
    registers: [registry],
  });
  return (r) => {
    const outcome = r.ok ? "ok" : "failed";
    converges.inc({ outcome });
    seconds.observe({ outcome }, r.ms / 1000);
    if (r.discarded) discarded.inc(r.discarded);
  };
}
