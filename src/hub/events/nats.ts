// The hub's NATS connection: connect, reconnect forever, track connectivity, check the events stream.
import {
  type JetStreamClient,
  type JetStreamManager,
  jetstream,
  jetstreamManager,
} from "@nats-io/jetstream";
import { connect, type NatsConnection } from "@nats-io/transport-node";
import { FlotillaError, type Logger } from "../../shared/index.js";
import {
  type EnsureOutcome,
  ensureStream,
  eventsStreamContract,
  type StreamContract,
} from "./streams.js";
import { checkSubjectRoot, DEFAULT_SUBJECT_ROOT } from "./subjects.js";

export interface NatsOptions {
  /** nats://host:port; several comma-separated for a cluster. */
  url: string;
  /** The events stream's name. Default FLOTILLA_EVENTS. */
  stream?: string;
  /** The first subject token of every event. Default flotilla. */
  subjectRoot?: string;
  /** How long startup waits for the first connection. Default 10 s. */
  connectTimeoutMs?: number;
}

export interface NatsReadiness {
  ok: boolean;
  connected: boolean;
  stream: string;
  detail?: string;
}

/** One connection per hub replica; JetStream clients over it; the events stream checked at open. */
export class NatsBackbone {
  private connected = true;
  private lastCheck: { at: number; result: NatsReadiness } | undefined;

  private constructor(
    readonly nc: NatsConnection,
    readonly js: JetStreamClient,
    readonly jsm: JetStreamManager,
    readonly contract: StreamContract,
    readonly subjectRoot: string,
    readonly streamOutcome: EnsureOutcome,
    private readonly logger: Logger,
  ) {
    void this.watchStatus();
  }

  static async open(o: NatsOptions, logger: Logger, name: string): Promise<NatsBackbone> {
    const subjectRoot = checkSubjectRoot(o.subjectRoot ?? DEFAULT_SUBJECT_ROOT);
    const contract = eventsStreamContract({
      subjectRoot,
      ...(o.stream ? { name: o.stream } : {}),
    });
    let nc: NatsConnection;
    try {
      nc = await connect({
        servers: o.url.split(",").map((s) => s.trim()),
        name,
        timeout: o.connectTimeoutMs ?? 10_000,
        // After the first connection, never give up: the outbox holds events meanwhile.
        maxReconnectAttempts: -1,
        reconnectTimeWait: 1000,
      });
    } catch (err) {
      throw new FlotillaError(
        "events.unavailable",
        `cannot connect to NATS at ${o.url}: ${(err as Error).message}; start it or fix --nats-url (FLOTILLA_NATS_URL)`,
        { field: "nats_url", cause: err },
      );
    }
    try {
      const jsm = await jetstreamManager(nc);
      const outcome = await ensureStream(jsm, contract);
      logger.info({ stream: contract.name, outcome, subjectRoot }, "NATS events stream ready");
      return new NatsBackbone(nc, jetstream(nc), jsm, contract, subjectRoot, outcome, logger);
    } catch (err) {
      await nc.close().catch(() => {});
      throw err;
    }
  }

  private async watchStatus(): Promise<void> {
    for await (const s of this.nc.status()) {
      if (s.type === "disconnect") {
        this.connected = false;
        this.logger.warn(
          { server: s.server },
          "NATS disconnected; the outbox holds events until it is back",
        );
      } else if (s.type === "reconnect") {
        this.connected = true;
        this.logger.info({ server: s.server }, "NATS reconnected");
      }
    }
  }

  isConnected(): boolean {
    return this.connected && !this.nc.isClosed();
  }

  /** For /ready: connected, and the events stream still answers (cached 2 s: probes come often). */
  async readiness(): Promise<NatsReadiness> {
    const now = Date.now();
    if (this.lastCheck && now - this.lastCheck.at < 2000) return this.lastCheck.result;
    const stream = this.contract.name;
    let result: NatsReadiness;
    if (!this.isConnected())
      result = { ok: false, connected: false, stream, detail: "NATS disconnected" };
    else {
      try {
        await this.jsm.streams.info(stream);
        result = { ok: true, connected: true, stream };
      } catch (err) {
        result = {
          ok: false,
          connected: true,
          stream,
          detail: `stream ${stream}: ${(err as Error).message}`,
        };
      }
    }
    this.lastCheck = { at: now, result };
    return result;
  }

  async close(): Promise<void> {
    if (this.nc.isClosed()) return;
    await this.nc.drain().catch(() => this.nc.close());
  }
}
