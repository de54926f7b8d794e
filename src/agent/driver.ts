// The driver contract: what the agent asks of whatever runs a service (exec processes, Docker).
import { get as httpGet } from "node:http";
import { connect } from "node:net";
export interface ExecSpec {
  command: string;
  args: string[];
  workingDirectory: string;
  port: number;
}

export interface DockerSpec {
  image: string;
  command: string[];
  port: number;
}

export interface RunSpec {
  serviceId: string;
  serviceSlug: string;
  environmentId: string;
  deploymentId: string;
  visibility: "PUBLIC" | "PRIVATE";
  driver: "exec" | "docker";
  /** A catalogue template (a managed database): the exec driver runs its bootstrap first. */
  template?: string;
  exec?: ExecSpec;
  docker?: DockerSpec;
  healthCheck: { type: "" | "tcp" | "http"; path: string };
  restartPolicy: "always" | "on-failure" | "never";
  volumes: Array<{ name: string; mountPath: string }>;
  env: Record<string, string>;
}

export type InstanceStatus = "deploying" | "running" | "stopped" | "failed";

export interface StatusReport {
  serviceId: string;
  deploymentId: string;
  status: InstanceStatus;
  reason?: string;
  endpoint?: string;
}

export interface InstanceInfo {
  serviceId: string;
  deploymentId: string;
  /** A process id (exec) or 0 (docker). */
  pid: number;
  port: number;
}

export interface Driver {
  readonly name: "exec" | "docker";
  /** Stops whatever runs for the service, then runs this deployment until healthy. */
  deploy(spec: RunSpec): Promise<{ endpoint: string }>;
  /** Runs the deployment unless it already runs. */
  start(spec: RunSpec): Promise<{ endpoint: string }>;
  /** Stops the service's instance; nothing of it keeps running. */
  stop(serviceId: string, report?: boolean): Promise<void>;
  /** Stops and forgets the instance; its volumes go too when purgeData. */
  remove(serviceId: string, purgeData: boolean): Promise<void>;
  /** Takes over instances that survived an agent restart; returns their service ids. */
  adopt(): Promise<string[]>;
  /** Whether this driver runs an instance of the service now. */
  has(serviceId: string): boolean;
  list(): InstanceInfo[];
  tail(serviceId: string, lines: number): Promise<string[]>;
  follow(serviceId: string, emit: (lines: string[]) => void): () => void;
  close(): Promise<void>;
}

/** Probes a health check (or a plain TCP connect) on a loopback port. */
export async function probe(
  check: { type: "tcp" | "http"; path: string },
  port: number,
): Promise<boolean> {
  if (check.type === "http") {
    // node:http, not fetch: fetch loads undici, ~15 MB the agent cannot spare.
    return new Promise((resolve) => {
      const req = httpGet({ host: "127.0.0.1", port, path: check.path, timeout: 2000 }, (res) => {
        res.resume();
        resolve((res.statusCode ?? 0) >= 200 && (res.statusCode ?? 0) < 400);
      });
      req.once("error", () => resolve(false));
      req.once("timeout", () => {
        req.destroy();
        resolve(false);
      });
    });
  }
  return new Promise((resolve) => {
    const socket = connect({ host: "127.0.0.1", port }, () => {
      socket.destroy();
      resolve(true);
    });
    socket.once("error", () => resolve(false));
    socket.setTimeout(2000, () => {
      socket.destroy();
      resolve(false);
    });
  });
}
