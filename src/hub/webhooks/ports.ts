// What the webhooks module consumes from others: a sealer for endpoint secrets and the audit trail.
import type { Caller } from "../../shared/index.js";
import type { Queryable } from "../../store/index.js";

/** AES-256-GCM under the master key (the config module's Keyring satisfies it). */
export interface Sealer {
  /** The key new seals use; rotation re-seals what another key sealed. */
  readonly current: { id: string };
  seal(plaintext: string, aad: string): { sealed: Buffer; keyId: string };
  open(sealed: Buffer | Uint8Array, keyId: string, aad: string): string;
}

export type WebhookAudit = (
  tx: Queryable,
  c: Caller,
  action: "webhook.created" | "webhook.deleted",
  endpointId: string,
) => Promise<void>;
