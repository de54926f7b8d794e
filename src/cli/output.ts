// CLI output: human tables or --json, and errors mapped to exit codes scripts can rely on.
import { ConnectCode, ERROR_CATALOGUE, ERROR_CODE_HEADER, FlotillaError } from "../shared/index.js";

/** A ConnectError, recognized by shape: the CLI's entry must not load the Connect runtime. */
interface ConnectLike {
  code: number;
  rawMessage: string;
  metadata: Headers;
}
const isConnectError = (err: unknown): err is ConnectLike =>
  err instanceof Error && err.name === "ConnectError" && "rawMessage" in err && "metadata" in err;
const CODE_NAMES = new Map<number, string>(Object.entries(ConnectCode).map(([k, v]) => [v, k]));

/** Exit codes: documented in docs/cli.md; scripts may branch on them. */
export const EXIT = {
  ok: 0,
  failure: 1,
  usage: 2,
  unauthenticated: 3,
  permissionDenied: 4,
  notFound: 5,
  conflict: 6,
  unavailable: 7,
} as const;

export function printTable(rows: Array<Record<string, string>>, columns: string[]): void {
  if (rows.length === 0) {
    process.stdout.write("(none)\n");
    return;
  }
  const widths = columns.map((c) => Math.max(c.length, ...rows.map((r) => (r[c] ?? "").length)));
  const line = (cells: string[]) =>
    cells
      .map((cell, i) => cell.padEnd(widths[i]!))
      .join("  ")
      .trimEnd();
  process.stdout.write(`${line(columns.map((c) => c.toUpperCase()))}\n`);
  for (const r of rows) process.stdout.write(`${line(columns.map((c) => r[c] ?? ""))}\n`);
}

export function printJson(value: unknown): void {
  process.stdout.write(`${JSON.stringify(value, null, 2)}\n`);
}

const EXIT_BY_CODE: Record<number, number> = {
  [ConnectCode.Unauthenticated]: EXIT.unauthenticated,
  [ConnectCode.PermissionDenied]: EXIT.permissionDenied,
  [ConnectCode.NotFound]: EXIT.notFound,
  [ConnectCode.AlreadyExists]: EXIT.conflict,
  [ConnectCode.Unavailable]: EXIT.unavailable,
  [ConnectCode.InvalidArgument]: EXIT.usage,
};

export function reportError(err: unknown, json: boolean): number {
  let code = "internal";
  let message = err instanceof Error ? err.message : String(err);
  let exit: number = EXIT.failure;
  // Errors raised here in the CLI carry the same catalogue codes as the hub's, and exit alike.
  const connectErr: { code: number; rawMessage: string; catalogueCode: string | null } | null =
    err instanceof FlotillaError
      ? {
          code: ERROR_CATALOGUE[err.code].connect,
          rawMessage: err.message,
          catalogueCode: err.code,
        }
      : isConnectError(err)
        ? {
            code: err.code,
            rawMessage: err.rawMessage,
            catalogueCode: err.metadata.get(ERROR_CODE_HEADER),
          }
        : null;
  if (connectErr) {
    code =
      connectErr.catalogueCode ??
      CODE_NAMES.get(connectErr.code)?.replace(
        /[A-Z]/g,
        (c, i) => (i ? "_" : "") + c.toLowerCase(),
      ) ??
      String(connectErr.code);
    message = connectErr.rawMessage;
    exit = EXIT_BY_CODE[connectErr.code] ?? EXIT.failure;
    if (connectErr.code === ConnectCode.Unavailable && /fetch failed|ECONNREFUSED/i.test(message)) {
      message = `${message}: is the hub running? (flotilla up, or check --hub)`;
    }
    // A wrong password at `flotilla login` needs no advice to run it.
    if (connectErr.code === ConnectCode.Unauthenticated && code !== "auth.invalid_credentials")
      message = `${message} (run: flotilla login, or flotilla setup on a hub without an owner yet)`;
  }
  if (json) process.stderr.write(`${JSON.stringify({ error: { code, message } })}\n`);
  else process.stderr.write(`error: ${message} [${code}]\n`);
  return exit;
}
