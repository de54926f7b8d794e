// A service's spec: how to run it (exec or docker), health check, restart policy, volumes; validated field by field.
import { invalid } from "../../shared/index.js";

export type Driver = "exec" | "docker";
export type RestartPolicy = "always" | "on-failure" | "never";

export interface ServiceSpec {
  driver: Driver;
  /** Set only by the template catalogue (a managed database): the agent runs its bootstrap. */
  template?: string;
  exec?: { command: string; args: string[]; workingDirectory: string; port: number };
  docker?: { image: string; command: string[]; port: number };
  healthCheck: { type: "" | "tcp" | "http"; path: string };
  restartPolicy: RestartPolicy;
  volumes: Array<{ name: string; mountPath: string }>;
}

export interface SpecInput {
  driver?: Driver;
  exec?: { command: string; args: string[]; workingDirectory: string; port: number };
  docker?: { image: string; command: string[]; port: number };
  healthCheck?: { type: string; path: string };
  restartPolicy?: RestartPolicy;
  volumes?: Array<{ name: string; mountPath: string }>;
}

// Bounds keep one spec well under the 1 MiB request limit and the agent frame size.
const MAX_ARG = 4096;
const MAX_ARGS = 256;
const MAX_VOLUMES = 32;
const VOLUME_NAME = /^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?$/;
// A Docker reference: [registry/]name[:tag][@digest], lowercase path components.
const IMAGE =
  /^[a-z0-9]+([._-][a-z0-9]+)*(:[0-9]+)?(\/[a-z0-9]+([._-][a-z0-9]+)*)*(:[\w][\w.-]{0,127})?(@sha256:[a-f0-9]{64})?$/;

function text(field: string, value: string, { required = false, max = MAX_ARG } = {}): string {
  if (required && !value) throw invalid(field, "is required");
  if (value.length > max) throw invalid(field, `must be at most ${max} characters`);
  if (value.includes("\0")) throw invalid(field, "must not contain a NUL byte");
  return value;
}

function port(field: string, value: number): number {
  if (!Number.isInteger(value) || value < 0 || value > 65535)
    throw invalid(field, "must be from 0 to 65535 (0: no port)");
  return value;
}

function list(field: string, values: string[]): string[] {
  if (values.length > MAX_ARGS) throw invalid(field, `must have at most ${MAX_ARGS} items`);
  return values.map((v, i) => text(`${field}[${i}]`, v));
}

function absolutePath(field: string, value: string, required: boolean): string {
  text(field, value, { required, max: 1024 });
  if (value && !value.startsWith("/")) throw invalid(field, "must be an absolute path");
  return value;
}

/** Validates and normalizes a spec; the field paths in errors start with `prefix`. */
export function checkSpec(input: SpecInput | undefined, prefix = "spec"): ServiceSpec {
  if (!input) throw invalid(prefix, "is required");
  const driver = input.driver;
  if (driver !== "exec" && driver !== "docker")
    throw invalid(`${prefix}.driver`, "must be exec or docker");
  const spec: ServiceSpec = {
    driver,
    healthCheck: { type: "", path: "" },
    restartPolicy: input.restartPolicy ?? "always",
    volumes: [],
  };
  let servicePort = 0;
  if (driver === "exec") {
    const e = input.exec;
    if (!e) throw invalid(`${prefix}.exec`, "is required for the exec driver");
    spec.exec = {
      command: text(`${prefix}.exec.command`, e.command, { required: true }),
      args: list(`${prefix}.exec.args`, e.args),
      workingDirectory: absolutePath(`${prefix}.exec.working_directory`, e.workingDirectory, false),
      port: port(`${prefix}.exec.port`, e.port),
    };
    servicePort = spec.exec.port;
  } else {
    const d = input.docker;
    if (!d) throw invalid(`${prefix}.docker`, "is required for the docker driver");
    const image = text(`${prefix}.docker.image`, d.image, { required: true, max: 512 });
    if (!IMAGE.test(image))
      throw invalid(
        `${prefix}.docker.image`,
        `"${image.slice(0, 80)}" is not a valid image reference`,
      );
    spec.docker = {
      image,
      command: list(`${prefix}.docker.command`, d.command),
      port: port(`${prefix}.docker.port`, d.port),
    };
    servicePort = spec.docker.port;
  }
  const hc = input.healthCheck ?? { type: "", path: "" };
  if (hc.type !== "" && hc.type !== "tcp" && hc.type !== "http") {
    throw invalid(`${prefix}.health_check.type`, 'must be "tcp", "http" or empty');
  }
  if (hc.type && servicePort === 0)
    throw invalid(`${prefix}.health_check.type`, "needs the service to listen on a port");
  if (hc.type === "http" && !hc.path.startsWith("/"))
    throw invalid(`${prefix}.health_check.path`, "must start with /");
  spec.healthCheck = {
    type: hc.type,
    path: hc.type === "http" ? text(`${prefix}.health_check.path`, hc.path, { max: 1024 }) : "",
  };
  if (!["always", "on-failure", "never"].includes(spec.restartPolicy)) {
    throw invalid(`${prefix}.restart_policy`, "must be always, on-failure or never");
  }
  const volumes = input.volumes ?? [];
  if (volumes.length > MAX_VOLUMES)
    throw invalid(`${prefix}.volumes`, `must have at most ${MAX_VOLUMES} items`);
  const names = new Set<string>();
  const paths = new Set<string>();
  spec.volumes = volumes.map((v, i) => {
    const f = `${prefix}.volumes[${i}]`;
    if (!VOLUME_NAME.test(v.name))
      throw invalid(`${f}.name`, "must be 1-40 lowercase letters, digits or dashes");
    const mountPath = absolutePath(`${f}.mount_path`, v.mountPath, true);
    if (names.has(v.name)) throw invalid(`${f}.name`, `"${v.name}" is used twice`);
    if (paths.has(mountPath)) throw invalid(`${f}.mount_path`, `"${mountPath}" is used twice`);
    names.add(v.name);
    paths.add(mountPath);
    return { name: v.name, mountPath };
  });
  return spec;
}
