// Instructions per WhoAmI on a hub on PostgreSQL, counted by callgrind (bench/lib/callgrind.mjs):
// the hub's own work per call, at its shipped log level (info: one `rpc` line per call), without
// what the machine's load does to requests/s. User space only. Prints one JSON line.
import { randomBytes } from "node:crypto";
import { countInstructions, printFigures, skippedWithoutValgrind } from "./lib/callgrind.mjs";
import {
  CLI,
  connectJson,
  createDatabase,
  freePorts,
  requireBuild,
  runBenchmark,
  settings,
  tempDir,
} from "./lib/common.mjs";

const ADMIN = { email: "bench-cg@example.com", password: "bench-cg-password-0123" };

async function main() {
  requireBuild();
  if (skippedWithoutValgrind("whoami-instructions")) return;
  const cfg = settings();
  const dir = tempDir("flotilla-bench-cg-", { keep: cfg.keepLogs });
  const db = await createDatabase(cfg.pgAdminUrl);
  const [port, grpcPort] = await freePorts(2);
  const base = `http://127.0.0.1:${port}`;
  const hub = await countInstructions("hub", {
    script: CLI,
    args: ["hub", "--host", "127.0.0.1", "--port", String(port), "--grpc-port", String(grpcPort)],
    dir,
    env: {
      FLOTILLA_DATABASE_URL: db.url,
      FLOTILLA_SESSION_SECRET: randomBytes(48).toString("base64url"),
      FLOTILLA_MASTER_KEY: randomBytes(32).toString("base64"),
      FLOTILLA_ADMIN_EMAIL: ADMIN.email,
      FLOTILLA_ADMIN_PASSWORD: ADMIN.password,
      FLOTILLA_LOG_LEVEL: cfg.logLevel,
    },
    ready: `${base}/ready`,
    request: {
      url: `${base}/flotilla.v1.IdentityService/WhoAmI`,
      method: "POST",
      body: "{}",
    },
    async prepare() {
      const login = await connectJson(`${base}/flotilla.v1.IdentityService/Login`, ADMIN);
      if (login.status !== 200) throw new Error(`Login answered ${login.status}`);
      return {
        headers: {
          "content-type": "application/json",
          authorization: `Bearer ${login.body.sessionToken}`,
        },
      };
    },
  });
  printFigures("whoami-instructions", { logLevel: cfg.logLevel, hub });
}

runBenchmark(main);
