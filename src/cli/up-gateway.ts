// `flotilla up` runs a gateway in the same process too: registered as gateway `local` in the first
// organization's default data plane once one exists, so PUBLIC services are reachable through it.
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { type Gateway, startGateway } from "../gateway/index.js";
import type { Hub } from "../hub/index.js";
import type { Logger } from "../shared/index.js";

export interface LocalGatewayOptions {
  dataDir: string;
  port: number;
  host: string;
}

export function localGateway(hub: Hub, o: LocalGatewayOptions, logger: Logger) {
  let gateway: Gateway | undefined;
  let stopped = false;
  let timer: NodeJS.Timeout | undefined;
  const tokenFile = join(o.dataDir, "token");
  const attempt = async () => {
    if (stopped) return;
    try {
      mkdirSync(o.dataDir, { recursive: true, mode: 0o700 });
      if (!existsSync(tokenFile)) {
        const owner = await hub.identity.firstOwner();
        if (!owner) {
          timer = setTimeout(attempt, 2000);
          return;
        }
        const caller = {
          organizationId: owner.organizationId,
          actor: { type: "user" as const, id: owner.userId },
        };
        const created = await hub.gateways.create(caller, { name: "local" });
        // The token is the gateway's only credential: kept beside its store, readable by the owner only.
        writeFileSync(tokenFile, `${created.token}\n`, { mode: 0o600 });
        await hub.serviceRoutes.sweep(owner.organizationId);
      }
      gateway = await startGateway({
        hubUrl: hub.url,
        token: readFileSync(tokenFile, "utf8").trim(),
        port: o.port,
        host: o.host,
        dataDir: o.dataDir,
        accessLog: false,
      });
      logger.info({ url: gateway.url }, "local gateway serving");
    } catch (err) {
      // A busy port is the operator's choice to make (--gateway-port, --no-gateway), not a fault.
      if ((err as { code?: string }).code === "EADDRINUSE")
        logger.warn(
          { port: o.port },
          `port ${o.port} is in use: the local gateway retries in 10 s (choose another with --gateway-port, or --no-gateway)`,
        );
      else logger.error({ err }, "the local gateway could not start; retrying in 10 s");
      timer = setTimeout(attempt, 10_000);
      timer.unref();
    }
  };
  void attempt();
  return {
    async stop() {
      stopped = true;
      clearTimeout(timer);
      await gateway?.close();
    },
  };
}
