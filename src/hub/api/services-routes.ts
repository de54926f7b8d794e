// Connect handlers for ServicesService: services, deployments, rollback, and the live event stream.
import type { ConnectRouter, HandlerContext } from "@connectrpc/connect";
import {
  Driver,
  RestartPolicy,
  ServicesService as ServicesRpc,
  type ServiceSpec as SpecMessage,
  Visibility,
  type WatchEventsRequest,
} from "../../gen/flotilla/v1/services_pb.js";
import { checkId, invalid } from "../../shared/index.js";
import type { Queryable } from "../../store/index.js";
import type { WaitOptions } from "../control/index.js";
import { type EventBus, eventsAfter, latestEvents, type StoredEvent } from "../outbox/index.js";
import type { Dispatch } from "../servers/index.js";
import type {
  Deployment,
  Service,
  ServiceSpec,
  ServicesService,
  SpecInput,
  Visibility as VisibilityName,
} from "../services/index.js";
import { toConnectError } from "./connect-errors.js";
import { caller, ts } from "./handler-context.js";

const DRIVER_FROM_PROTO = new Map<Driver, "exec" | "docker">([
  [Driver.EXEC, "exec"],
  [Driver.DOCKER, "docker"],
]);
const RESTART_FROM_PROTO = new Map<RestartPolicy, "always" | "on-failure" | "never">([
  [RestartPolicy.ALWAYS, "always"],
  [RestartPolicy.ON_FAILURE, "on-failure"],
  [RestartPolicy.NEVER, "never"],
]);
const RESTART_TO_PROTO = new Map([...RESTART_FROM_PROTO].map(([k, v]) => [v, k]));
const VISIBILITY_FROM_PROTO = new Map<Visibility, VisibilityName>([
  [Visibility.PRIVATE, "PRIVATE"],
  [Visibility.PUBLIC, "PUBLIC"],
]);

function specInput(m: SpecMessage | undefined): SpecInput | undefined {
  if (!m) return undefined;
  return {
    driver: DRIVER_FROM_PROTO.get(m.driver),
    exec: m.exec && {
      command: m.exec.command,
      args: m.exec.args,
      workingDirectory: m.exec.workingDirectory,
      port: m.exec.port,
    },
    docker: m.docker && { image: m.docker.image, command: m.docker.command, port: m.docker.port },
    healthCheck: m.healthCheck && { type: m.healthCheck.type, path: m.healthCheck.path },
    // Unspecified means the default (always); checkSpec rejects anything else it does not know.
    restartPolicy:
      m.restartPolicy === RestartPolicy.UNSPECIFIED
        ? undefined
        : (RESTART_FROM_PROTO.get(m.restartPolicy) ?? ("unknown" as "always")),
    volumes: m.volumes.map((v) => ({ name: v.name, mountPath: v.mountPath })),
  };
}

const spec = (s: ServiceSpec) => ({
  driver: s.driver === "docker" ? Driver.DOCKER : Driver.EXEC,
  exec: s.exec,
  docker: s.docker,
  healthCheck: s.healthCheck,
  restartPolicy: RESTART_TO_PROTO.get(s.restartPolicy) ?? RestartPolicy.UNSPECIFIED,
  volumes: s.volumes,
});

const service = (s: Service) => ({
  id: s.id,
  projectId: s.projectId,
  environmentId: s.environmentId,
  slug: s.slug,
  name: s.name,
  kind: s.kind,
  templateId: s.templateId ?? "",
  visibility: s.visibility === "PUBLIC" ? Visibility.PUBLIC : Visibility.PRIVATE,
  serverId: s.serverId ?? "",
  spec: spec(s.spec),
  desiredDeploymentId: s.desiredDeploymentId ?? "",
  observed: {
    status: s.observed.status,
    reason: s.observed.reason ?? "",
    deploymentId: s.observed.deploymentId ?? "",
    endpoint: s.observed.endpoint ?? "",
    observedAt: ts(s.observed.observedAt),
  },
  createdAt: ts(s.createdAt),
  updatedAt: ts(s.updatedAt),
});

const deployment = (d: Deployment) => ({
  id: d.id,
  serviceId: d.serviceId,
  number: d.number,
  spec: spec(d.spec),
  configVersion: d.configVersion,
  reason: d.reason,
  sourceDeploymentId: d.sourceDeploymentId ?? "",
  createdBy: d.createdBy,
  createdAt: ts(d.createdAt),
  status: d.status,
  statusReason: d.statusReason ?? "",
  endpoint: d.endpoint ?? "",
  observedAt: ts(d.observedAt),
  desired: d.desired,
});

const job = (d: Dispatch) => {
  const r = (d.result ?? {}) as { exit_code?: number | null; stdout?: string; stderr?: string };
  return {
    id: d.id,
    serviceId: d.serviceId ?? "",
    state: d.state,
    exitCode: r.exit_code ?? (d.state === "done" || d.state === "failed" ? -1 : 0),
    stdout: r.stdout ?? "",
    stderr: r.stderr ?? "",
    error: d.error ?? "",
    createdAt: ts(d.createdAt),
    updatedAt: ts(d.updatedAt),
  };
};

const event = (e: StoredEvent) => ({
  event: {
    id: e.id,
    type: e.type,
    subjectId: e.subjectId,
    payloadJson: JSON.stringify(e.payload),
    correlationId: e.correlationId,
    occurredAt: ts(e.occurredAt),
  },
});

/** A service's log lines from its agent (wired to the control channel). */
export type LogSource = (
  c: ReturnType<typeof caller>,
  serviceId: string,
  lines: number,
  follow: boolean,
  signal: AbortSignal,
) => AsyncIterable<string[]>;

export interface ServicesRouteOptions {
  logs: LogSource;
  /** Jobs are dispatches: read through the servers module. */
  jobs: { get(c: ReturnType<typeof caller>, id: string): Promise<Dispatch> };
  services: ServicesService;
  events: EventBus;
  db: Queryable;
  /** Aborted when the hub shuts down, so open watch streams end instead of holding shutdown. */
  shutdown: AbortSignal;
  /**
   * Runs a write that records an intent, routes the dispatch it wrote, and (wait_seconds > 0)
   * waits for its outcome. Without it, requests never wait.
   */
  operations?: {
    around<T>(
      o: WaitOptions,
      write: () => Promise<T>,
    ): Promise<{ value: T; dispatch: Dispatch | null }>;
    check(waitSeconds: number): number;
  };
}

const outcome = (d: Dispatch | null) =>
  d ? { id: d.id, state: d.state, error: d.error ?? "" } : undefined;

// A watcher that falls this far behind is cut off; it resumes with since_id.
const MAX_QUEUED_EVENTS = 10_000;
// Ids remembered to drop events that arrive both by replay and live.
const SEEN_WINDOW = 2_000;

export function servicesRoutes(router: ConnectRouter, o: ServicesRouteOptions): void {
  const { services } = o;
  /**
   * The write, and the wait for its dispatch when asked: the service is resolved first (its events
   * are the progress), and a bad wait_seconds is refused before anything is written.
   */
  async function operate<T>(
    ctx: HandlerContext,
    serviceIdText: string,
    waitSeconds: number,
    write: () => Promise<T>,
  ): Promise<{ value: T; dispatch: Dispatch | null }> {
    if (!o.operations) {
      if (waitSeconds) throw invalid("wait_seconds", "this hub cannot wait for operations");
      return { value: await write(), dispatch: null };
    }
    if (!o.operations.check(waitSeconds))
      return o.operations.around(
        { organizationId: "", serviceId: "", waitSeconds: 0, signal: ctx.signal },
        write,
      );
    const c = caller(ctx);
    const target = await services.getService(c, serviceIdText);
    return o.operations.around(
      {
        organizationId: c.organizationId,
        serviceId: target.id,
        waitSeconds,
        signal: AbortSignal.any([ctx.signal, o.shutdown]),
      },
      write,
    );
  }
  const refreshed = async (ctx: HandlerContext, s: Service, waited: boolean) =>
    waited ? services.getService(caller(ctx), s.id) : s;
  router.service(ServicesRpc, {
    async createService(req, ctx) {
      const r = await services.createService(caller(ctx), {
        environmentId: req.environmentId,
        name: req.name,
        slug: req.slug,
        visibility: VISIBILITY_FROM_PROTO.get(req.visibility),
        serverId: req.serverId,
        spec: specInput(req.spec),
        deployNow: req.deployNow,
      });
      return {
        service: service(r.service),
        deployment: r.deployment ? deployment(r.deployment) : undefined,
      };
    },
    async listServices(req, ctx) {
      const list = await services.listServices(caller(ctx), {
        project: req.project,
        environmentId: req.environmentId,
      });
      return { services: list.map(service) };
    },
    async getService(req, ctx) {
      const r = await services.describeService(caller(ctx), req.serviceId);
      return {
        service: service(r.service),
        configChanged: r.configChanged,
        effectiveConfigVersion: r.configVersion,
      };
    },
    async updateService(req, ctx) {
      const s = await services.updateService(caller(ctx), req.serviceId, {
        name: req.name,
        visibility: VISIBILITY_FROM_PROTO.get(req.visibility),
        serverId: req.serverId,
        spec: specInput(req.spec),
      });
      return { service: service(s) };
    },
    async deleteService(req, ctx) {
      const r = await operate(ctx, req.serviceId, req.waitSeconds, () =>
        services.deleteService(caller(ctx), req.serviceId, req.purgeData),
      );
      return { dispatch: outcome(r.dispatch) };
    },
    async startService(req, ctx) {
      const r = await operate(ctx, req.serviceId, req.waitSeconds, () =>
        services.lifecycle(caller(ctx), req.serviceId, "start"),
      );
      return {
        service: service(await refreshed(ctx, r.value, !!r.dispatch)),
        dispatch: outcome(r.dispatch),
      };
    },
    async stopService(req, ctx) {
      const r = await operate(ctx, req.serviceId, req.waitSeconds, () =>
        services.lifecycle(caller(ctx), req.serviceId, "stop"),
      );
      return {
        service: service(await refreshed(ctx, r.value, !!r.dispatch)),
        dispatch: outcome(r.dispatch),
      };
    },
    async restartService(req, ctx) {
      const r = await operate(ctx, req.serviceId, req.waitSeconds, () =>
        services.lifecycle(caller(ctx), req.serviceId, "restart"),
      );
      return {
        service: service(await refreshed(ctx, r.value, !!r.dispatch)),
        dispatch: outcome(r.dispatch),
      };
    },
    async deploy(req, ctx) {
      const r = await operate(ctx, req.serviceId, req.waitSeconds, () =>
        services.deploy(caller(ctx), req.serviceId),
      );
      const d = r.dispatch ? await services.getDeployment(caller(ctx), r.value.id) : r.value;
      return { deployment: deployment(d), dispatch: outcome(r.dispatch) };
    },
    async runJob(req, ctx) {
      const c = caller(ctx);
      const r = await operate(ctx, req.serviceId, req.waitSeconds, () =>
        services.runJob(c, req.serviceId, {
          command: req.command,
          args: req.args,
          timeoutSeconds: req.timeoutSeconds,
        }),
      );
      return { job: job(await o.jobs.get(c, r.value)) };
    },
    async getJob(req, ctx) {
      return { job: job(await o.jobs.get(caller(ctx), req.jobId)) };
    },
    async *streamLogs(req, ctx) {
      try {
        const lines = req.lines || 100;
        if (!Number.isInteger(lines) || lines < 1 || lines > 10_000)
          throw invalid("lines", "must be between 1 and 10000");
        const signal = AbortSignal.any([ctx.signal, o.shutdown]);
        for await (const batch of o.logs(caller(ctx), req.serviceId, lines, req.follow, signal))
          yield { lines: batch };
      } catch (err) {
        throw toConnectError(err);
      }
    },
    async listDeployments(req, ctx) {
      const list = await services.listDeployments(caller(ctx), req.serviceId, req.limit);
      return { deployments: list.map(deployment) };
    },
    async getDeployment(req, ctx) {
      return {
        deployment: deployment(await services.getDeployment(caller(ctx), req.deploymentId)),
      };
    },
    async rollback(req, ctx) {
      const r = await operate(ctx, req.serviceId, req.waitSeconds, () =>
        services.rollback(caller(ctx), req.serviceId, req.deploymentId),
      );
      const d = r.dispatch ? await services.getDeployment(caller(ctx), r.value.id) : r.value;
      return { deployment: deployment(d), dispatch: outcome(r.dispatch) };
    },
    async listEvents(req, ctx) {
      const c = caller(ctx);
      const limit = req.limit || 100;
      if (!Number.isInteger(limit) || limit < 1 || limit > 500)
        throw invalid("limit", "must be between 1 and 500");
      const serviceId = req.serviceId ? (await services.getService(c, req.serviceId)).id : null;
      const filter = { organizationId: c.organizationId, serviceId };
      const list = req.afterId
        ? await eventsAfter(o.db, filter, checkId("after_id", req.afterId), limit)
        : await latestEvents(o.db, filter, limit);
      return { events: list.map((e) => event(e).event) };
    },
    async *watchEvents(req, ctx) {
      // A stream's errors surface after the auth interceptor has returned, so they get their
      // catalogue code and field here; otherwise Connect would answer a bad id with "internal".
      try {
        yield* watch(req, ctx);
      } catch (err) {
        throw toConnectError(err);
      }
    },
  });

  async function* watch(req: WatchEventsRequest, ctx: HandlerContext) {
    const c = caller(ctx);
    const serviceId = req.serviceId ? (await services.getService(c, req.serviceId)).id : null;
    let cursor = req.sinceId ? checkId("since_id", req.sinceId) : null;
    const matches = (e: StoredEvent) =>
      e.organizationId === c.organizationId &&
      (!serviceId || e.subjectId === serviceId || e.payload.service_id === serviceId);

    // Subscribe before replaying, so an event committed during the replay is not missed.
    const queue: StoredEvent[] = [];
    let wake: (() => void) | undefined;
    let overflow = false;
    const unsubscribe = o.events.subscribe((e) => {
      if (!matches(e)) return;
      if (queue.length >= MAX_QUEUED_EVENTS) overflow = true;
      else queue.push(e);
      wake?.();
    });
    const stop = () => wake?.();
    ctx.signal.addEventListener("abort", stop);
    o.shutdown.addEventListener("abort", stop);
    const seen = new Set<string>();
    const remember = (id: string) => {
      seen.add(id);
      if (seen.size > SEEN_WINDOW) seen.delete(seen.values().next().value!);
    };
    try {
      if (cursor) {
        for (;;) {
          const page = await eventsAfter(
            o.db,
            { organizationId: c.organizationId, serviceId },
            cursor,
            500,
          );
          for (const e of page) {
            remember(e.id);
            yield event(e);
          }
          if (page.length < 500) break;
          cursor = page[page.length - 1]!.id;
        }
      }
      while (!ctx.signal.aborted && !o.shutdown.aborted) {
        const next = queue.shift();
        if (next) {
          if (seen.has(next.id)) continue;
          remember(next.id);
          yield event(next);
          continue;
        }
        if (overflow) return;
        await new Promise<void>((resolve) => {
          wake = resolve;
        });
        wake = undefined;
      }
    } finally {
      unsubscribe();
      ctx.signal.removeEventListener("abort", stop);
      o.shutdown.removeEventListener("abort", stop);
    }
  }
}

/** The Service message of a service (the databases routes answer with it too). */
export { service as serviceMessage };
