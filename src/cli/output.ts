// CLI output: human tables or --json, and errors mapped to exit codes scripts can rely on.
import { Code, ConnectError } from "@connectrpc/connect";
import { ERROR_CODE_HEADER, FlotillaError } from "../shared/index.js";

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

export function reportError(err: unknown, json: boolean): number {
  let code = "internal";
  let message = err instanceof Error ? err.message : String(err);
  let exit: number = EXIT.failure;
  if (err instanceof FlotillaError) {
    code = err.code;
    exit =
      err.code === "config.invalid"
        ? EXIT.usage
        : err.code === "store.locked"
          ? EXIT.unavailable
          : EXIT.failure;
  } else if (err instanceof ConnectError) {
    code = err.metadata.get(ERROR_CODE_HEADER) ?? Code[err.code];
    message = err.rawMessage;
    exit =
      err.code === Code.Unauthenticated
        ? EXIT.unauthenticated
        : err.code === Code.PermissionDenied
          ? EXIT.permissionDenied
          : err.code === Code.NotFound
            ? EXIT.notFound
            : err.code === Code.AlreadyExists
              ? EXIT.conflict
              : err.code === Code.Unavailable
                ? EXIT.unavailable
                : err.code === Code.InvalidArgument
                  ? EXIT.usage
                  : EXIT.failure;
    if (err.code === Code.Unavailable && /fetch failed|ECONNREFUSED/i.test(message)) {
      message = `${message}: is the hub running? (flotilla up, or check --hub)`;
    }
    if (err.code === Code.Unauthenticated) message = `${message} (run: flotilla login)`;
  }
  if (json) process.stderr.write(`${JSON.stringify({ error: { code, message } })}\n`);
  else process.stderr.write(`error: ${message} [${code}]\n`);
  return exit;
}
