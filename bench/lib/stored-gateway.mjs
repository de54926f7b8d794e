// A gateway serving one stored RestApi (`/bench` -> the upstream) with its hub unreachable, for
// benchmarks of the data path alone. Access log on, to stdout, as `flotilla gateway` runs.
// Usage: node bench/lib/stored-gateway.mjs PORT UPSTREAM_PORT DATA_DIR
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const dist = join(dirname(fileURLToPath(import.meta.url)), "..", "..", "dist");
const { LocalStore, startGateway } = await import(join(dist, "src/gateway/index.js"));
const [port, upstreamPort] = process.argv.slice(2, 4).map(Number);
const dataDir = process.argv[4];
const token = "fgw_bench-stored";
const apiId = "0190a000-0000-7000-8000-000000000001";
const deploymentId = "0190a000-0000-7000-8000-00000000000a";
const store = new LocalStore(dataDir, token);
store.upsert({
  apiId,
  deploymentId,
  kind: "RestApi",
  state: "DEPLOYED",
  deployedAt: 1,
  content: JSON.stringify({
    apiId,
    deploymentId,
    name: "bench",
    kind: "RestApi",
    definition: { contextPath: "/bench", upstream: { url: `http://127.0.0.1:${upstreamPort}` } },
  }),
});
store.close();
await startGateway({
  hubUrl: "http://127.0.0.1:1",
  token,
  port,
  host: "127.0.0.1",
  dataDir,
  logLevel: "error",
});
