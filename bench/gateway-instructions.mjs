// Instructions per proxied GET, counted by callgrind: `flotilla gateway`'s data path against a
// plain byte pipe on the same node:net sockets (bench/lib/pipe-proxy.mjs, the floor of any Node
// proxy), both in front of the 1 KB upstream. An instruction count does not move with what else
// the machine is doing, so it compares two builds where requests/s on shared cores cannot.
// Counts are user space only (the kernel's socket work is not in them). Prints one JSON line.
import { join } from "node:path";
import { countInstructions, printFigures, skippedWithoutValgrind } from "./lib/callgrind.mjs";
import {
  freePorts,
  ROOT,
  requireBuild,
  runBenchmark,
  settings,
  startNode,
  tempDir,
  waitReady,
} from "./lib/common.mjs";

async function main() {
  requireBuild();
  if (skippedWithoutValgrind("gateway-instructions")) return;
  const dir = tempDir("flotilla-bench-cg-", { keep: settings().keepLogs });
  const [upstreamPort, gatewayPort, pipePort] = await freePorts(3);
  const upstream = startNode(
    "upstream",
    [join(ROOT, "bench/lib/upstream-1k.mjs"), String(upstreamPort)],
    { logDir: dir },
  );
  await waitReady(upstream, `http://127.0.0.1:${upstreamPort}`);
  const proxied = (port) => ({
    ready: `http://127.0.0.1:${port}/bench/ready`,
    request: { url: `http://127.0.0.1:${port}/bench/item` },
  });
  const gateway = await countInstructions("gateway", {
    script: join(ROOT, "bench/lib/stored-gateway.mjs"),
    args: [String(gatewayPort), String(upstreamPort), tempDir("flotilla-bench-cg-gw-")],
    dir,
    ...proxied(gatewayPort),
  });
  const pipe = await countInstructions("pipe", {
    script: join(ROOT, "bench/lib/pipe-proxy.mjs"),
    args: [String(pipePort), String(upstreamPort)],
    dir,
    ...proxied(pipePort),
  });
  printFigures("gateway-instructions", {
    gateway,
    pipe,
    gatewayToPipeMainThread:
      Math.round((100 * gateway.mainThreadPerRequest) / pipe.mainThreadPerRequest) / 100,
  });
}

runBenchmark(main);
