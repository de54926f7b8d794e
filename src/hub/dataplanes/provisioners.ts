// Provisioners: what turns a data plane's desired links into endpoints. `command` runs an operator's program (JSON in, JSON out); `local` provisions nothing and says so.
import { spawn } from "node:child_process";
import { FlotillaError } from "../../shared/index.js";
import { LINK_STATUSES, type LinkConfig, type LinkStatus, type Provider } from "./links.js";

/** Contract version written into every request; a wrapper may refuse a version it does not know. */
export const PROVISIONER_CONTRACT_VERSION = 1;

export interface DesiredLink {
  id: string;
  generation: number;
  provider: Provider;
  serviceIdentity: string;
  config: LinkConfig;
}

export interface ProvisionRequest {
  version: number;
  dataPlane: { id: string; organizationId: string; name: string; region: string | null };
  /** The complete desired set: a link absent here is one to tear down. */
  links: DesiredLink[];
}

export interface LinkResult {
  id: string;
  /** When given, the generation the provisioner acted on; a result for another one is discarded. */
  generation?: number;
  status: LinkStatus;
  details?: Record<string, unknown> | null;
  error?: string | null;
}

export interface Provisioner {
  /** "local" or "command": shown in logs and errors. */
  readonly kind: string;
  /** Rejects (a ProvisionerError) when the whole run failed; per-link failures are results. */
  provision(request: ProvisionRequest, signal: AbortSignal): Promise<LinkResult[]>;
}

/** The whole provisioner run failed: crashed, timed out, unreadable output. No link is changed. */
export class ProvisionerError extends Error {
  override readonly name = "ProvisionerError";
}

/** For development: provisions nothing real and says so in each link's details. */
export function localProvisioner(): Provisioner {
  return {
    kind: "local",
    async provision(request) {
      return request.links.map((link) => ({
        id: link.id,
        generation: link.generation,
        status: "provisioned" as const,
        details: {
          provisioner: "local",
          endpoint: `local://${link.provider}/${link.serviceIdentity}`,
          note: "nothing was provisioned: the local provisioner is for development and creates no cloud resources",
        },
      }));
    },
  };
}

export interface CommandProvisionerOptions {
  /** The program to run (absolute path recommended); it gets the request on stdin. */
  command: string;
  args?: string[];
  /** Extra environment for the program (cloud credentials, a Terraform workspace...). */
  env?: Record<string, string>;
  /** Kill the program after this long. Default 10 minutes: a Terraform apply takes minutes. */
  timeoutMs?: number;
  /** Working directory. Default: the hub's. */
  cwd?: string;
}

/** Largest stdout read: 500 links of results fit in well under 1 MiB; 16 MiB is a runaway program. */
const MAX_STDOUT_BYTES = 16 * 1024 * 1024;
/** How much of stderr is kept for the error message (its end: where programs say what failed). */
const STDERR_TAIL_BYTES = 2048;
const DEFAULT_TIMEOUT_MS = 10 * 60_000;

/**
 * The program's environment: the hub's own, minus FLOTILLA_* (the session secret and master key
 * live there and must never reach another program), plus the configured extras.
 */
function programEnv(extra: Record<string, string> | undefined): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith("FLOTILLA_")) env[k] = v;
  return { ...env, ...extra };
}

/**
 * Runs an operator-configured program once per converge: the ProvisionRequest as JSON on stdin,
 * `{"results": [LinkResult...]}` as JSON on stdout, exit code 0. Anything else (a non-zero exit,
 * a timeout, output that is not that JSON) fails the run with the stderr tail in the message.
 * The contract is docs/provisioners.md.
 */
export function commandProvisioner(o: CommandProvisionerOptions): Provisioner {
  const timeoutMs = o.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  return {
    kind: "command",
    provision(request, signal) {
      return new Promise<LinkResult[]>((resolve, reject) => {
        // Its own process group, so a timeout kills what the program started too (terraform's
        // providers), not just the wrapper.
        const child = spawn(o.command, o.args ?? [], {
          cwd: o.cwd,
          env: programEnv(o.env),
          stdio: ["pipe", "pipe", "pipe"],
          detached: true,
        });
        const out: Buffer[] = [];
        let outBytes = 0;
        let errTail = Buffer.alloc(0);
        let failure: string | undefined;
        const kill = (why: string) => {
          failure ??= why;
          try {
            if (child.pid) process.kill(-child.pid, "SIGKILL");
          } catch {
            child.kill("SIGKILL");
          }
        };
        const timer = setTimeout(
          () => kill(`timed out after ${Math.round(timeoutMs / 1000)} s and was killed`),
          timeoutMs,
        );
        const onAbort = () => kill("was stopped: the hub is shutting down or lost its claim");
        signal.addEventListener("abort", onAbort, { once: true });
        child.stdout.on("data", (chunk: Buffer) => {
          outBytes += chunk.length;
          if (outBytes > MAX_STDOUT_BYTES)
            kill(`wrote more than ${MAX_STDOUT_BYTES} bytes to stdout and was killed`);
          else out.push(chunk);
        });
        child.stderr.on("data", (chunk: Buffer) => {
          errTail = Buffer.concat([errTail, chunk]);
          if (errTail.length > STDERR_TAIL_BYTES) errTail = errTail.subarray(-STDERR_TAIL_BYTES);
        });
        // A program that exits without reading stdin makes the write fail with EPIPE: its exit
        // status tells what happened, so the write error itself is ignored.
        child.stdin.on("error", () => {});
        child.stdin.end(JSON.stringify(request));
        child.once("error", (err) => kill(`could not be started: ${err.message}`));
        child.once("close", (code, sig) => {
          clearTimeout(timer);
          signal.removeEventListener("abort", onAbort);
          const tail = errTail.toString("utf8").trim();
          const withTail = (m: string) =>
            new ProvisionerError(
              `provisioner ${o.command} ${m}${tail ? `; stderr ends with: ${tail}` : ""}`,
            );
          if (failure) return reject(withTail(failure));
          if (code !== 0)
            return reject(withTail(`exited with ${sig ? `signal ${sig}` : `code ${code}`}`));
          try {
            resolve(parseResults(Buffer.concat(out).toString("utf8")));
          } catch (err) {
            reject(withTail((err as Error).message));
          }
        });
      });
    },
  };
}

/**
 * The program's stdout: `{"results": [...]}`. An entry without a usable id is ignored (it cannot
 * be tied to a link); an entry with an id but a bad status becomes that link's failure, so one
 * bad entry never hides the others.
 */
export function parseResults(stdout: string): LinkResult[] {
  let parsed: unknown;
  try {
    parsed = JSON.parse(stdout);
  } catch {
    throw new Error(
      `wrote output that is not JSON (${stdout.length} bytes; starts with ${JSON.stringify(stdout.slice(0, 60))})`,
    );
  }
  const results = (parsed as { results?: unknown })?.results;
  if (!Array.isArray(results))
    throw new Error('wrote JSON without a "results" array: expected {"results": [...]}');
  const out: LinkResult[] = [];
  for (const entry of results) {
    if (!entry || typeof entry !== "object") continue;
    const e = entry as Record<string, unknown>;
    if (typeof e.id !== "string" || !e.id) continue;
    const generation =
      typeof e.generation === "number" && Number.isInteger(e.generation) ? e.generation : undefined;
    const base = { id: e.id, ...(generation !== undefined ? { generation } : {}) };
    if (!(LINK_STATUSES as readonly unknown[]).includes(e.status)) {
      out.push({
        ...base,
        status: "failed",
        error: `the provisioner reported status ${JSON.stringify(e.status)?.slice(0, 40)}, not pending, provisioned or failed`,
      });
      continue;
    }
    const details =
      e.details && typeof e.details === "object" && !Array.isArray(e.details)
        ? (e.details as Record<string, unknown>)
        : e.details === undefined || e.details === null
          ? null
          : { value: e.details };
    const error = typeof e.error === "string" ? e.error.slice(0, 4000) : null;
    out.push({
      ...base,
      status: e.status as LinkStatus,
      details,
      error: e.status === "failed" ? (error ?? "the provisioner gave no reason") : error,
    });
  }
  return out;
}

/**
 * What a provisioner returned, without U+0000: PostgreSQL text and jsonb refuse it ("invalid byte
 * sequence" / "unsupported Unicode escape sequence"), and one NUL in a detail, an error or a
 * stderr tail would otherwise make every write of the run fail. Strings, keys and nested values.
 */
export function withoutNul<T>(value: T): T {
  if (typeof value === "string") return value.replaceAll("\u0000", "") as T;
  if (Array.isArray(value)) return value.map((v) => withoutNul(v)) as T;
  if (value && typeof value === "object") {
    const out: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(value)) out[withoutNul(k)] = withoutNul(v);
    return out as T;
  }
  return value;
}

export type ProvisionerConfig =
  | { kind: "local" }
  | ({ kind: "command" } & CommandProvisionerOptions);

const NAME = /^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?$/;

/**
 * Provisioners by name from the operator's configuration (FLOTILLA_PROVISIONERS, a JSON object
 * of name -> {kind, command, args, env, timeoutMs}). `local` is always there.
 */
export function provisionersFrom(
  configs: Record<string, ProvisionerConfig> = {},
): Map<string, Provisioner> {
  const map = new Map<string, Provisioner>([["local", localProvisioner()]]);
  for (const [name, c] of Object.entries(configs)) {
    if (!NAME.test(name))
      throw new FlotillaError(
        "config.invalid",
        `provisioner name ${JSON.stringify(name.slice(0, 60))} must be a slug (lowercase letters, digits, dashes)`,
      );
    if (c?.kind === "local") map.set(name, localProvisioner());
    else if (c?.kind === "command") {
      if (typeof c.command !== "string" || !c.command)
        throw new FlotillaError(
          "config.invalid",
          `provisioner ${name}: "command" must name the program to run`,
        );
      if (
        c.args !== undefined &&
        !(Array.isArray(c.args) && c.args.every((a) => typeof a === "string"))
      )
        throw new FlotillaError(
          "config.invalid",
          `provisioner ${name}: "args" must be a list of strings`,
        );
      if (
        c.timeoutMs !== undefined &&
        !(Number.isInteger(c.timeoutMs) && c.timeoutMs >= 1000 && c.timeoutMs <= 24 * 3_600_000)
      )
        throw new FlotillaError(
          "config.invalid",
          `provisioner ${name}: "timeoutMs" must be whole milliseconds between 1000 and 86400000`,
        );
      map.set(name, commandProvisioner(c));
    } else
      throw new FlotillaError(
        "config.invalid",
        `provisioner ${name}: "kind" must be "command" or "local"`,
      );
  }
  return map;
}

/** Parses FLOTILLA_PROVISIONERS. */
export function parseProvisionersOption(
  raw: string | undefined,
): Record<string, ProvisionerConfig> {
  if (!raw?.trim()) return {};
  let parsed: unknown;
  try {
    parsed = JSON.parse(raw);
  } catch (err) {
    throw new FlotillaError(
      "config.invalid",
      `--provisioners (FLOTILLA_PROVISIONERS) is not JSON: ${(err as Error).message}`,
    );
  }
  if (!parsed || typeof parsed !== "object" || Array.isArray(parsed))
    throw new FlotillaError(
      "config.invalid",
      '--provisioners (FLOTILLA_PROVISIONERS) must be a JSON object, e.g. {"terraform": {"kind": "command", "command": "/opt/flotilla/tf-links"}}',
    );
  return parsed as Record<string, ProvisionerConfig>;
}
