// CLI output: human tables or --json, and errors mapped to exit codes scripts can rely on.
import { Code, ConnectError } from "@connectrpc/connect";
import { ERROR_CODE_HEADER, FlotillaError, toConnectError } from "../shared/index.js";

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

const EXIT_BY_CODE: Partial<Record<Code, number>> = {
  [Code.Unauthenticated]: EXIT.unauthenticated,
  [Code.PermissionDenied]: EXIT.permissionDenied,
  [Code.NotFound]: EXIT.notFound,
  [Code.AlreadyExists]: EXIT.conflict,
  [Code.Unavailable]: EXIT.unavailable,
  [Code.InvalidArgument]: EXIT.usage,
};

export function reportError(err: unknown, json: boolean): number {
  let code = "internal";
  let message = err instanceof Error ? err.message : String(err);
  let exit: number = EXIT.failure;
  // Errors raised here in the CLI carry the same catalogue codes as the hub's, and exit alike.
  const connectErr =
    err instanceof FlotillaError ? toConnectError(err) : err instanceof ConnectError ? err : null;
  if (connectErr) {
    code = connectErr.metadata.get(ERROR_CODE_HEADER) ?? Code[connectErr.code];
    message = connectErr.rawMessage;
    exit = EXIT_BY_CODE[connectErr.code] ?? EXIT.failure;
    if (connectErr.code === Code.Unavailable && /fetch failed|ECONNREFUSED/i.test(message)) {
      message = `${message}: is the hub running? (flotilla up, or check --hub)`;
    }
    if (connectErr.code === Code.Unauthenticated) message = `${message} (run: flotilla login)`;
  }
  if (json) process.stderr.write(`${JSON.stringify({ error: { code, message } })}\n`);
  else process.stderr.write(`error: ${message} [${code}]\n`);
  return exit;
}
