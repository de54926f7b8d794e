// The benchmark's upstream: answers every request with the same 1 KB body (what the gateway, nginx
// and @fastify/http-proxy all proxy to). Usage: node bench/lib/upstream-1k.mjs PORT
import { createServer } from "node:http";

const body = Buffer.alloc(1024, "x");
const server = createServer((req, res) => {
  if (req.url === "/ready") {
    res.writeHead(200);
    res.end("ok");
    return;
  }
  req.resume();
  res.writeHead(200, { "content-type": "text/plain", "content-length": body.length });
  res.end(body);
});
server.keepAliveTimeout = 65_000;
server.listen(Number(process.argv[2]), "127.0.0.1");
for (const signal of ["SIGTERM", "SIGINT"])
  process.once(signal, () => server.close(() => process.exit(0)));
