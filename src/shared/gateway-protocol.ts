// The gateway sync protocol between hub and gateway: paths, bodies and WebSocket frames. Shared
// so both sides agree; it imports nothing, so the gateway process loads no hub code.

/** This build's version, as agents and gateways report it (package.json's; a unit test keeps them equal). */
export const FLOTILLA_VERSION = "0.1.0";

/** The header a gateway names its version in, on the event stream's upgrade request. */
export const GATEWAY_VERSION_HEADER = "x-flotilla-gateway-version";

export const GATEWAY_SYNC = {
  /** GET ?since=<ms>: the expected set (or rows changed after since) and the full set's hash. */
  deployments: "/internal/gateway/v1/deployments",
  /** GET: the config hash of the expected set. */
  configHash: "/internal/gateway/v1/config-hash",
  /** POST {deploymentIds}: an archive (ustar), one top-level directory per deploymentId. */
  content: "/internal/gateway/v1/content",
  /** POST {deploymentIds}: which of them still exist; asked before any delete. */
  exists: "/internal/gateway/v1/exists",
  /** POST {reports}: observed status per deployment. */
  status: "/internal/gateway/v1/status",
  /** WebSocket: deploy/undeploy events, acknowledged by id. */
  events: "/internal/gateway/v1/events",
} as const;

/** The hub refuses larger content batches; the gateway asks for 50 at a time by default. */
export const MAX_CONTENT_BATCH = 500;
export const DEFAULT_CONTENT_BATCH = 50;

export type ApiState = "DEPLOYED" | "UNDEPLOYED";

export interface ExpectedRow {
  apiId: string;
  deploymentId: string;
  kind: string;
  state: ApiState;
  /** Milliseconds since the epoch. */
  deployedAt: number;
}

export interface DeploymentsResponse {
  gatewayId: string;
  deployments: ExpectedRow[];
  /** Hash of the full expected set (also when `since` filtered the rows). */
  configHash: string;
}

export interface StatusReport {
  apiId: string;
  deploymentId: string;
  deployedAt: number;
  status: "deployed" | "undeployed" | "failed";
  reason?: string;
}

/** hub → gateway */
export type HubToGatewayFrame =
  | { type: "hello"; gatewayId: string }
  | {
      type: "event";
      /** The outbox event id: the gateway acknowledges it. */
      id: string;
      event: "api.deployed" | "api.undeployed";
      row: ExpectedRow;
      ctx: { correlation: string; traceparent: string };
    };

/** gateway → hub */
export type GatewayToHubFrame = { type: "ack"; id: string };

/** The canonical line each side hashes for one row (sorted, joined by newlines, SHA-256 hex). */
export function expectedRowLine(d: ExpectedRow): string {
  return `${d.apiId}|${d.deploymentId}|${d.state}|${d.deployedAt}`;
}
