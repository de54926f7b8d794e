// The agent's durable state in its data directory: its credentials and the ledger of executed
// dispatches, so a dispatch the hub sends again is answered from the ledger, never run twice.
import {
  appendFileSync,
  existsSync,
  mkdirSync,
  readFileSync,
  renameSync,
  writeFileSync,
} from "node:fs";
import { join } from "node:path";

export interface Credentials {
  hub: string;
  server_id: string;
  organization_id: string;
  name: string;
  secret: string;
}

export interface Outcome {
  ok: boolean;
  result?: unknown;
  error?: string;
}

const CREDENTIALS_FILE = "agent.json";
const LEDGER_FILE = "dispatches.jsonl";
// Remembered outcomes; older ones are dropped from memory (the hub's row is done by then).
const LEDGER_MEMORY = 10_000;

export function loadCredentials(dataDir: string): Credentials | undefined {
  const file = join(dataDir, CREDENTIALS_FILE);
  if (!existsSync(file)) return undefined;
  return JSON.parse(readFileSync(file, "utf8")) as Credentials;
}

/** Written to a temporary file and renamed, so a crash never leaves half a secret. */
export function saveCredentials(dataDir: string, creds: Credentials): void {
  mkdirSync(dataDir, { recursive: true, mode: 0o700 });
  const file = join(dataDir, CREDENTIALS_FILE);
  writeFileSync(`${file}.tmp`, JSON.stringify(creds, null, 2), { mode: 0o600 });
  renameSync(`${file}.tmp`, file);
}

export class Ledger {
  private readonly outcomes = new Map<string, Outcome>();
  private readonly file: string;

  constructor(dataDir: string) {
    mkdirSync(dataDir, { recursive: true, mode: 0o700 });
    this.file = join(dataDir, LEDGER_FILE);
    if (existsSync(this.file)) {
      for (const line of readFileSync(this.file, "utf8").split("\n")) {
        if (!line) continue;
        try {
          const { id, started, ...outcome } = JSON.parse(line) as Outcome & {
            id: string;
            started?: boolean;
          };
          // Started and never finished: the agent died mid-execution. Running it again could
          // do it twice, so it is reported as interrupted instead.
          this.remember(
            id,
            started
              ? {
                  ok: false,
                  error: "the agent stopped while executing this dispatch; it was not run again",
                }
              : outcome,
          );
        } catch {
          // A torn last line from a crash mid-write: that dispatch never completed here.
        }
      }
    }
  }

  get(id: string): Outcome | undefined {
    return this.outcomes.get(id);
  }

  /** Marks a dispatch as started before any effect, so a crash mid-way is never re-run blind. */
  begin(id: string): void {
    appendFileSync(this.file, `${JSON.stringify({ id, started: true })}\n`, { mode: 0o600 });
  }

  /** Appends the outcome before the hub is told, so a crash after telling cannot forget it. */
  record(id: string, outcome: Outcome): void {
    // Outcomes carry job output: the file is the agent's alone (the mode applies on creation).
    appendFileSync(this.file, `${JSON.stringify({ id, ...outcome })}\n`, { mode: 0o600 });
    this.remember(id, outcome);
  }

  get size(): number {
    return this.outcomes.size;
  }

  private remember(id: string, outcome: Outcome) {
    this.outcomes.set(id, outcome);
    if (this.outcomes.size > LEDGER_MEMORY)
      this.outcomes.delete(this.outcomes.keys().next().value!);
  }
}
