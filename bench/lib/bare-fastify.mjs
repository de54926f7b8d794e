// The reference peer: a minimal Fastify 5 server, run as a child process like the hub, answering
// the WhoAmI route with a constant JSON body. Its throughput is the ceiling this machine allows a
// Node HTTP/1.1 JSON endpoint, so hub figures are reported as ratios to it.
// Usage: node bench/lib/bare-fastify.mjs PORT [BODY_JSON]
import Fastify from "fastify";

const port = Number(process.argv[2]);
const body = process.argv[3] ?? "{}";
const app = Fastify({ logger: false });

app.get("/ready", async () => ({ status: "ready" }));
app.post("/flotilla.v1.IdentityService/WhoAmI", (_request, reply) => {
  reply.type("application/json").send(body);
});

await app.listen({ host: "127.0.0.1", port });
process.stdout.write(`bare fastify listening on ${port}\n`);
for (const signal of ["SIGTERM", "SIGINT"]) {
  process.once(signal, () => {
    app.close().then(() => process.exit(0));
  });
}
