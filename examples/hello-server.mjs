// A small HTTP service to deploy with Flotilla: answers every request with $GREETING.
// flotilla services create hello --env demo/production --port 8000 --health http:/healthz -- node "$PWD/examples/hello-server.mjs"
// (an absolute path: the agent runs it in the service's own directory). The agent sets PORT.
import { createServer } from "node:http";

// Without PORT (a service created without --port), not 8000: that is flotilla up's gateway.
const port = Number(process.env.PORT ?? 3000);
const host = process.env.HOST ?? "127.0.0.1";
const greeting = process.env.GREETING ?? "hello";

const server = createServer((req, res) => {
  if (req.url === "/healthz") {
    res.writeHead(200).end("ok\n");
    return;
  }
  res.writeHead(200, { "content-type": "text/plain" });
  res.end(`${greeting} from ${process.env.FLOTILLA_SERVICE ?? "hello"} (pid ${process.pid})\n`);
});
server.listen(port, host, () => console.log(`listening on ${host}:${port}`));
process.on("SIGTERM", () => server.close(() => process.exit(0)));
