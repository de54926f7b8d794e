// Command-line options: every option also reads a FLOTILLA_* environment variable; flags win.
import { readFileSync } from "node:fs";
import { parseArgs } from "node:util";
import { FlotillaError } from "../shared/index.js";

export interface OptionSpec {
  type: "string" | "boolean";
  /** Environment variable read when the flag is absent. */
  env?: string;
  default?: string | boolean;
  short?: string;
  description: string;
}

export type OptionSpecs = Record<string, OptionSpec>;

export interface Parsed {
  values: Record<string, string | boolean | undefined>;
  positionals: string[];
}

export function parseOptions(
  argv: string[],
  specs: OptionSpecs,
  env: NodeJS.ProcessEnv = process.env,
): Parsed {
  const config: Record<string, { type: "string" | "boolean"; short?: string }> = {};
  for (const [name, spec] of Object.entries(specs)) {
    config[name] = spec.short ? { type: spec.type, short: spec.short } : { type: spec.type };
  }
  let parsed: ReturnType<typeof parseArgs>;
  try {
    parsed = parseArgs({ args: argv, options: config, allowPositionals: true, strict: true });
  } catch (err) {
    throw new FlotillaError("config.invalid", (err as Error).message);
  }
  const values: Parsed["values"] = {};
  for (const [name, spec] of Object.entries(specs)) {
    const flag = parsed.values[name];
    const fromEnv = spec.env ? env[spec.env] : undefined;
    if (flag !== undefined) values[name] = flag as string | boolean;
    else if (fromEnv !== undefined && fromEnv !== "")
      values[name] = spec.type === "boolean" ? /^(1|true|yes)$/i.test(fromEnv) : fromEnv;
    else values[name] = spec.default;
  }
  return { values, positionals: parsed.positionals };
}

export function intOption(
  values: Parsed["values"],
  name: string,
  { min = 0, max = 65535 } = {},
): number | undefined {
  const raw = values[name];
  if (raw === undefined) return undefined;
  const n = Number(raw);
  if (!Number.isInteger(n) || n < min || n > max) {
    throw new FlotillaError(
      "config.invalid",
      `--${name} must be a whole number from ${min} to ${max}, got ${JSON.stringify(raw)}`,
    );
  }
  return n;
}

export function stringOption(values: Parsed["values"], name: string): string | undefined {
  const v = values[name];
  return typeof v === "string" && v !== "" ? v : undefined;
}

export function helpFor(usage: string, specs: OptionSpecs): string {
  const lines = [usage, "", "Options:"];
  for (const [name, spec] of Object.entries(specs)) {
    const flag = `  --${name}${spec.type === "string" ? " <value>" : ""}`;
    const extra = [
      spec.env ? `env ${spec.env}` : "",
      spec.default !== undefined ? `default ${spec.default}` : "",
    ]
      .filter(Boolean)
      .join(", ");
    lines.push(`${flag.padEnd(30)} ${spec.description}${extra ? ` (${extra})` : ""}`);
  }
  return lines.join("\n");
}

/** Resolves at the first SIGTERM or SIGINT: how long-running commands learn it is time to stop. */
export function untilStopSignal(): Promise<NodeJS.Signals> {
  return new Promise((resolve) => {
    process.once("SIGTERM", () => resolve("SIGTERM"));
    process.once("SIGINT", () => resolve("SIGINT"));
  });
}

/** An AbortSignal that aborts at the first SIGTERM or SIGINT (streaming commands). */
export function stopSignal(): AbortSignal {
  const abort = new AbortController();
  void untilStopSignal().then(() => abort.abort());
  return abort.signal;
}

/** Prints a command's usage and options; the value a command returns for --help. */
export function help(usage: string, specs: OptionSpecs): number {
  process.stdout.write(`${helpFor(usage, specs)}\n`);
  return 0;
}

/**
 * A file a flag names ("-": standard input), as text; one it cannot read is config.invalid
 * naming the flag and the file, not an internal error.
 */
export function readOptionFile(flag: string, file: string): string {
  try {
    return readFileSync(file === "-" ? 0 : file, "utf8");
  } catch (err) {
    throw new FlotillaError(
      "config.invalid",
      `${flag}: cannot read ${file}: ${(err as Error).message}`,
    );
  }
}

/** --tls-cert and --tls-key, read: both or neither (config.invalid naming the flag otherwise). */
export function tlsOptions(
  values: Record<string, string | boolean | undefined>,
): { cert: string; key: string } | undefined {
  const cert = stringOption(values, "tls-cert");
  const key = stringOption(values, "tls-key");
  if (!cert && !key) return undefined;
  if (!cert || !key)
    throw new FlotillaError("config.invalid", "--tls-cert and --tls-key go together");
  return { cert: readOptionFile("--tls-cert", cert), key: readOptionFile("--tls-key", key) };
}
