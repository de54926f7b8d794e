// The plain peer: @fastify/http-proxy in front of the benchmark's upstream, with default settings.
// Usage: node bench/lib/fastify-proxy.mjs PORT UPSTREAM_URL
import proxy from "@fastify/http-proxy";
import Fastify from "fastify";

const app = Fastify({ logger: false });
app.get("/ready", async () => ({ status: "ready" }));
await app.register(proxy, { upstream: process.argv[3], prefix: "/bench", rewritePrefix: "" });
await app.listen({ host: "127.0.0.1", port: Number(process.argv[2]) });
for (const signal of ["SIGTERM", "SIGINT"])
  process.once(signal, () => app.close().then(() => process.exit(0)));
