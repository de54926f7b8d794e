// Connect handlers for ConfigService: variables and sealed secrets.
import type { ConnectRouter } from "@connectrpc/connect";
import {
  ConfigKind,
  ConfigService as ConfigRpc,
  ConfigScope,
  type ConfigTarget as ConfigTargetMessage,
} from "../../gen/flotilla/v1/config_pb.js";
import type {
  ConfigEntry,
  ConfigService,
  ConfigTarget,
  ConfigKind as Kind,
  ScopeType,
} from "../config/index.js";
import { caller, ts } from "./handler-context.js";

const SCOPE_FROM_PROTO = new Map<ConfigScope, ScopeType>([
  [ConfigScope.ENVIRONMENT, "environment"],
  [ConfigScope.SERVICE, "service"],
]);
const KIND_FROM_PROTO = new Map<ConfigKind, Kind>([
  [ConfigKind.VARIABLE, "variable"],
  [ConfigKind.SECRET, "secret"],
]);

const target = (t: ConfigTargetMessage | undefined): ConfigTarget => ({
  scope: t ? SCOPE_FROM_PROTO.get(t.scope) : undefined,
  id: t?.id ?? "",
});

const entry = (e: ConfigEntry) => ({
  key: e.key,
  kind: e.kind === "secret" ? ConfigKind.SECRET : ConfigKind.VARIABLE,
  value: e.value,
  scope: e.scope === "service" ? ConfigScope.SERVICE : ConfigScope.ENVIRONMENT,
  updatedAt: ts(e.updatedAt),
});

export function configRoutes(router: ConnectRouter, config: ConfigService): void {
  router.service(ConfigRpc, {
    async setConfig(req, ctx) {
      const kind = KIND_FROM_PROTO.get(req.kind) ?? (req.kind === 0 ? "variable" : undefined);
      const r = await config.set(caller(ctx), target(req.target), req.key, req.value, kind);
      return { entry: entry(r.entry), version: r.version };
    },
    async importConfig(req, ctx) {
      return config.importDotenv(caller(ctx), target(req.target), req.dotenv, req.asSecrets);
    },
    async listConfig(req, ctx) {
      const r = await config.list(caller(ctx), target(req.target));
      return { entries: r.entries.map(entry), version: r.version };
    },
    async unsetConfig(req, ctx) {
      return config.unset(caller(ctx), target(req.target), req.key);
    },
    async revealSecret(req, ctx) {
      return { value: await config.reveal(caller(ctx), target(req.target), req.key) };
    },
    async getEffectiveConfig(req, ctx) {
      const r = await config.effective(caller(ctx), req.serviceId);
      return { entries: r.entries.map(entry), version: r.version };
    },
  });
}
