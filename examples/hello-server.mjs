// A small HTTP service to deploy with Flotilla: answers every request with $GREETING.
// flotilla services create hello --env demo/production --port 8000 --health http:/healthz -- node examples/hello-server.mjs
import { createServer } from "node:http";

const port = Number(process.env.PORT ?? 8000);
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
