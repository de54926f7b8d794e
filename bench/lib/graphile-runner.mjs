// The reference peer of bench/dispatch.mjs: one graphile-worker runner with a no-op task, in its
// own process (as each Flotilla replica is), on the benchmark's PostgreSQL. Prints "ready" on
// stdout once it listens for jobs; SIGTERM stops it.
import { Logger, run } from "graphile-worker";

const [connectionString, concurrencyText] = process.argv.slice(2);
const concurrency = Number(concurrencyText || 16);

const runner = await run({
  connectionString,
  concurrency,
  // Its own pool: one connection per concurrent job plus the listener.
  maxPoolSize: concurrency + 2,
  noHandleSignals: true,
  pollInterval: 2000,
  // Silent: a log line per job would cost it what the hubs' warn level spares them.
  logger: new Logger(() => () => {}),
  taskList: { noop: async () => {} },
});
process.stdout.write("ready\n");
process.once("SIGTERM", () => {
  runner.stop().finally(() => process.exit(0));
});
