// An in-process gateway serving from a pre-filled store, its hub unreachable: for tests of the
// data path and admin port that need no hub.
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  type Gateway,
  type GatewayOptions,
  LocalStore,
  type StoredRow,
  startGateway,
} from "../../src/gateway/index.js";

export interface StoredGateway {
  gateway: Gateway;
  /** Stops the gateway and removes its data directory. */
  close(): Promise<void>;
}

/**
 * A deployed API's stored row, its deployment id derived from the API id; `extra` goes into the
 * content beside the definition (an LLM provider's credential).
 */
export function deployedRow(
  apiId: string,
  definition: Record<string, unknown>,
  kind = "RestApi",
  extra: Record<string, unknown> = {},
): StoredRow {
  const deploymentId = `${apiId}-d`;
  return {
    apiId,
    deploymentId,
    kind,
    state: "DEPLOYED",
    deployedAt: 1,
    content: JSON.stringify({ apiId, deploymentId, name: apiId, kind, definition, ...extra }),
  };
}

/** Writes `rows` to a fresh store, then starts a gateway on it (port 0, loopback, quiet). */
export async function startStoredGateway(
  rows: StoredRow[],
  options: Partial<GatewayOptions> = {},
): Promise<StoredGateway> {
  const dir = mkdtempSync(join(tmpdir(), "flotilla-gw-test-"));
  const token = "fgw_test-stored";
  const store = new LocalStore(dir, token);
  for (const row of rows) store.upsert(row);
  store.close();
  try {
    const gateway = await startGateway({
      hubUrl: "http://127.0.0.1:1",
      token,
      port: 0,
      host: "127.0.0.1",
      dataDir: dir,
      accessLog: false,
      logLevel: "silent",
      ...options,
    });
    return {
      gateway,
      async close() {
        await gateway.close();
        rmSync(dir, { recursive: true, force: true });
      },
    };
  } catch (err) {
    rmSync(dir, { recursive: true, force: true });
    throw err;
  }
}
