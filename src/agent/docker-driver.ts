// The docker driver: the driver contract over the Docker Engine API (dockerode). One network per
// environment with the service slug as alias, named volumes, config as environment, the port
// published on loopback (PRIVATE) or all interfaces (PUBLIC), health checks, Docker's own restart
// policy, and labels so a restarted agent finds its containers again.
import { existsSync } from "node:fs";
import type Dockerode from "dockerode";
import type { Logger } from "../shared/index.js";
import {
  type Driver,
  type InstanceInfo,
  probe,
  type RunSpec,
  type StatusReport,
} from "./driver.js";

const LABEL_SERVICE = "flotilla.service";
const LABEL_DEPLOYMENT = "flotilla.deployment";
const HEALTH_TIMEOUT_MS = 60_000;
const STOP_GRACE_S = 10;

type DockerRun = RunSpec & { docker: NonNullable<RunSpec["docker"]> };

const containerName = (serviceId: string) => `flotilla-${serviceId}`;
const networkName = (environmentId: string) => `flotilla-${environmentId}`;
const volumeName = (serviceId: string, name: string) => `flotilla-${serviceId}-${name}`;

/** The Docker socket answers, or DOCKER_HOST names an engine that does. */
export async function dockerAvailable(): Promise<boolean> {
  // Without DOCKER_HOST or the default socket there is nothing to ask: do not load the client.
  if (!process.env.DOCKER_HOST && !existsSync("/var/run/docker.sock")) return false;
  try {
    const docker = await connectDocker();
    await docker.ping();
    return true;
  } catch {
    return false;
  }
}

async function connectDocker(): Promise<Dockerode> {
  // Loaded only when used: machines without Docker do not pay for the client's memory.
  const { default: Docker } = await import("dockerode");
  return new Docker();
}

/** Docker's multiplexed log stream: 8-byte frame headers (stream, 0, 0, 0, size as uint32 BE). */
function demux(buffer: Buffer): string {
  const out: Buffer[] = [];
  let i = 0;
  while (i + 8 <= buffer.length) {
    const size = buffer.readUInt32BE(i + 4);
    out.push(buffer.subarray(i + 8, i + 8 + size));
    i += 8 + size;
  }
  return i === 0 ? buffer.toString("utf8") : Buffer.concat(out).toString("utf8");
}

export class DockerDriver implements Driver {
  readonly name = "docker" as const;
  private readonly instances = new Map<string, InstanceInfo>();

  private constructor(
    private readonly docker: Dockerode,
    private readonly report: (r: StatusReport) => void,
    private readonly logger: Logger,
  ) {}

  static async create(report: (r: StatusReport) => void, logger: Logger): Promise<DockerDriver> {
    return new DockerDriver(await connectDocker(), report, logger);
  }

  async deploy(spec: RunSpec): Promise<{ endpoint: string }> {
    await this.stop(spec.serviceId);
    await this.removeContainer(spec.serviceId);
    return this.start(spec);
  }

  private async ensureNetwork(environmentId: string): Promise<string> {
    const name = networkName(environmentId);
    const found = await this.docker.listNetworks({ filters: { name: [name] } });
    if (!found.some((n) => n.Name === name))
      await this.docker.createNetwork({
        Name: name,
        Labels: { "flotilla.environment": environmentId },
      });
    return name;
  }

  private async ensureImage(image: string): Promise<void> {
    try {
      await this.docker.getImage(image).inspect();
    } catch {
      const stream = await this.docker.pull(image);
      await new Promise<void>((resolve, reject) =>
        this.docker.modem.followProgress(stream, (err) => (err ? reject(err) : resolve())),
      );
    }
  }

  async start(run: RunSpec): Promise<{ endpoint: string }> {
    if (run.driver !== "docker" || !run.docker)
      throw new Error("the docker driver runs docker specs only");
    const spec = run as DockerRun;
    this.report({
      serviceId: spec.serviceId,
      deploymentId: spec.deploymentId,
      status: "deploying",
    });
    const name = containerName(spec.serviceId);
    const existing = this.docker.getContainer(name);
    try {
      const info = await existing.inspect();
      if (info.State.Running && info.Config.Labels?.[LABEL_DEPLOYMENT] === spec.deploymentId)
        return this.running(spec, info);
      await existing.remove({ force: true });
    } catch {}
    await this.ensureImage(spec.docker.image);
    const network = await this.ensureNetwork(spec.environmentId);
    const port = spec.docker.port;
    const env = {
      ...spec.env,
      FLOTILLA_SERVICE: spec.serviceSlug,
      FLOTILLA_SERVICE_ID: spec.serviceId,
      FLOTILLA_DEPLOYMENT_ID: spec.deploymentId,
      ...(port ? { PORT: String(port) } : {}),
      // Where each volume is, as the exec driver says it (there: a directory of the agent's).
      ...Object.fromEntries(
        spec.volumes.map((v) => [
          `FLOTILLA_VOLUME_${v.name.toUpperCase().replace(/-/g, "_")}`,
          v.mountPath,
        ]),
      ),
    };
    const container = await this.docker.createContainer({
      name,
      Image: spec.docker.image,
      ...(spec.docker.command.length ? { Cmd: spec.docker.command } : {}),
      Env: Object.entries(env).map(([k, v]) => `${k}=${v}`),
      Labels: { [LABEL_SERVICE]: spec.serviceId, [LABEL_DEPLOYMENT]: spec.deploymentId },
      ExposedPorts: port ? { [`${port}/tcp`]: {} } : {},
      HostConfig: {
        PortBindings: port
          ? {
              [`${port}/tcp`]: [
                { HostIp: spec.visibility === "PUBLIC" ? "0.0.0.0" : "127.0.0.1", HostPort: "" },
              ],
            }
          : {},
        RestartPolicy: {
          Name:
            spec.restartPolicy === "never"
              ? "no"
              : spec.restartPolicy === "on-failure"
                ? "on-failure"
                : "always",
        },
        Mounts: spec.volumes.map((v) => ({
          Type: "volume" as const,
          Source: volumeName(spec.serviceId, v.name),
          Target: v.mountPath,
        })),
      },
      NetworkingConfig: { EndpointsConfig: { [network]: { Aliases: [spec.serviceSlug] } } },
    });
    await container.start();
    const deadline = Date.now() + HEALTH_TIMEOUT_MS;
    for (;;) {
      const info = await container.inspect();
      if (!info.State.Running && info.State.Status === "exited") {
        const reason = `${spec.docker.image} exited with ${info.State.ExitCode} before it was healthy`;
        this.report({
          serviceId: spec.serviceId,
          deploymentId: spec.deploymentId,
          status: "failed",
          reason,
        });
        throw new Error(reason);
      }
      const hostPort = Number(info.NetworkSettings.Ports?.[`${port}/tcp`]?.[0]?.HostPort ?? 0);
      const check = spec.healthCheck.type
        ? spec.healthCheck
        : port
          ? { type: "tcp", path: "" }
          : null;
      const healthy =
        check && hostPort
          ? await probe(check as { type: "tcp" | "http"; path: string }, hostPort)
          : info.State.Running;
      if (healthy) return this.running(spec, info);
      if (Date.now() > deadline)
        throw new Error(`not healthy within ${HEALTH_TIMEOUT_MS / 1000} s`);
      await new Promise((r) => setTimeout(r, 200));
    }
  }

  private running(spec: DockerRun, info: Dockerode.ContainerInspectInfo): { endpoint: string } {
    const port = spec.docker.port;
    const hostPort = Number(info.NetworkSettings.Ports?.[`${port}/tcp`]?.[0]?.HostPort ?? 0);
    const endpoint = hostPort ? `127.0.0.1:${hostPort}` : "";
    this.instances.set(spec.serviceId, {
      serviceId: spec.serviceId,
      deploymentId: spec.deploymentId,
      pid: info.State.Pid ?? 0,
      port: hostPort,
    });
    this.report({
      serviceId: spec.serviceId,
      deploymentId: spec.deploymentId,
      status: "running",
      ...(endpoint ? { endpoint } : {}),
    });
    this.logger.info(
      { service: spec.serviceId, container: info.Id.slice(0, 12) },
      "container running",
    );
    return { endpoint };
  }

  async stop(serviceId: string, report = false): Promise<void> {
    const known = this.instances.get(serviceId);
    try {
      await this.docker.getContainer(containerName(serviceId)).stop({ t: STOP_GRACE_S });
    } catch {
      // Not running, or no such container: nothing to stop.
    }
    if (report && known)
      this.report({ serviceId, deploymentId: known.deploymentId, status: "stopped" });
  }

  private async removeContainer(serviceId: string): Promise<void> {
    try {
      await this.docker.getContainer(containerName(serviceId)).remove({ force: true });
    } catch {}
  }

  async remove(serviceId: string, purgeData: boolean): Promise<void> {
    await this.stop(serviceId, true);
    await this.removeContainer(serviceId);
    this.instances.delete(serviceId);
    if (!purgeData) return;
    const { Volumes } = await this.docker.listVolumes({
      filters: { name: [`flotilla-${serviceId}-`] },
    });
    for (const v of Volumes ?? [])
      await this.docker
        .getVolume(v.Name)
        .remove()
        .catch(() => {});
  }

  async adopt(): Promise<string[]> {
    const containers = await this.docker.listContainers({
      filters: { label: [LABEL_SERVICE], status: ["running"] },
    });
    for (const c of containers) {
      const serviceId = c.Labels[LABEL_SERVICE]!;
      this.instances.set(serviceId, {
        serviceId,
        deploymentId: c.Labels[LABEL_DEPLOYMENT] ?? "",
        pid: 0,
        port: c.Ports.find((p) => p.PublicPort)?.PublicPort ?? 0,
      });
    }
    return containers.map((c) => c.Labels[LABEL_SERVICE]!);
  }

  has(serviceId: string): boolean {
    return this.instances.has(serviceId);
  }

  list(): InstanceInfo[] {
    return [...this.instances.values()];
  }

  async tail(serviceId: string, lines: number): Promise<string[]> {
    try {
      const buf = (await this.docker
        .getContainer(containerName(serviceId))
        .logs({ stdout: true, stderr: true, tail: lines, follow: false })) as unknown as Buffer;
      return demux(buf)
        .split("\n")
        .filter((l, i, all) => l !== "" || i < all.length - 1);
    } catch {
      return [];
    }
  }

  follow(serviceId: string, emit: (lines: string[]) => void): () => void {
    let stream: NodeJS.ReadableStream | undefined;
    let stopped = false;
    this.docker
      .getContainer(containerName(serviceId))
      .logs({ stdout: true, stderr: true, follow: true, tail: 0 })
      .then((s) => {
        stream = s as NodeJS.ReadableStream;
        if (stopped) (stream as unknown as { destroy(): void }).destroy();
        let partial = "";
        stream.on("data", (chunk: Buffer) => {
          const lines = (partial + demux(chunk)).split("\n");
          partial = lines.pop() ?? "";
          if (lines.length) emit(lines);
        });
      })
      .catch((err) =>
        this.logger.warn({ err, service: serviceId }, "cannot follow container logs"),
      );
    return () => {
      stopped = true;
      (stream as unknown as { destroy?(): void } | undefined)?.destroy?.();
    };
  }

  async close(): Promise<void> {
    // Containers keep running across an agent restart (Docker restarts them by policy).
  }
}
