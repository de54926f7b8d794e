// The floor the instruction benchmark compares the gateway with: a byte pipe with one upstream
// connection per client connection and no parsing at all, on the same node:net sockets.
// Usage: node bench/lib/pipe-proxy.mjs PORT UPSTREAM_PORT
import { connect, createServer } from "node:net";

const [port, upstreamPort] = process.argv.slice(2).map(Number);
createServer((client) => {
  const upstream = connect({ port: upstreamPort, host: "127.0.0.1" });
  client.setNoDelay(true);
  upstream.setNoDelay(true);
  client.on("data", (d) => upstream.write(d));
  upstream.on("data", (d) => client.write(d));
  client.on("close", () => upstream.destroy());
  upstream.on("close", () => client.destroy());
  client.on("error", () => {});
  upstream.on("error", () => {});
}).listen(port, "127.0.0.1");
