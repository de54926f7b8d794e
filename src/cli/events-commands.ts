// CLI commands over the event backbone: `events quarantine list|replay` and `webhooks add|list|remove|deliveries`.
import { toJson } from "@bufbuild/protobuf";
import {
  QuarantinedEventSchema,
  WebhookDeliverySchema,
  WebhookEndpointSchema,
} from "../gen/flotilla/v1/events_pb.js";
import { FlotillaError } from "../shared/index.js";
import { CONNECTION, connect, when } from "./client.js";
import { help, type OptionSpecs, type Parsed, parseOptions, stringOption } from "./options.js";
import { printJson, printTable } from "./output.js";

const usage = (message: string) => new FlotillaError("config.invalid", message);

function limitOf(values: Parsed["values"]): number {
  const n = values.limit === undefined ? 0 : Number(values.limit);
  if (!Number.isInteger(n) || n < 0 || n > 500)
    throw usage("--limit must be a whole number up to 500");
  return n;
}

/** `flotilla events quarantine list|replay`: poison messages the NATS consumers gave up on. */
export async function quarantineCommand(argv: string[]): Promise<number> {
  const specs: OptionSpecs = {
    ...CONNECTION,
    consumer: { type: "string", description: "list: only this consumer's (audit, webhooks)" },
    all: { type: "boolean", description: "list: include events already replayed" },
    limit: { type: "string", description: "list: how many, newest first (default 100)" },
  };
  const { values, positionals } = parseOptions(argv, specs);
  const [sub = "list", id] = positionals;
  if (values.help)
    return help(
      "flotilla events quarantine [list] [--consumer NAME] [--all] [--limit N] | replay ID\n\nEvents a NATS consumer terminated after max_deliver failures or because they were undecodable.\nreplay runs the consumer's handler on one once more (after a fix); its effect happens at most once.",
      specs,
    );
  const api = connect(values);
  const asJson = Boolean(values.json);
  if (sub === "list") {
    const r = await api.events.listQuarantinedEvents({
      consumer: stringOption(values, "consumer") ?? "",
      includeReplayed: Boolean(values.all),
      limit: limitOf(values),
    });
    if (asJson) printJson(r.events.map((e) => toJson(QuarantinedEventSchema, e)));
    else
      printTable(
        r.events.map((e) => ({
          id: e.id,
          consumer: e.consumer,
          type: e.eventType || "(undecodable)",
          seq: String(e.streamSeq),
          deliveries: String(e.deliveries),
          state: e.state,
          at: when(e.createdAt),
          reason: e.reason.slice(0, 80),
        })),
        ["id", "consumer", "type", "seq", "deliveries", "state", "at", "reason"],
      );
    return 0;
  }
  if (sub === "replay") {
    if (!id) throw usage("events quarantine replay needs the quarantined event's ID");
    const r = await api.events.replayQuarantinedEvent({ id });
    if (asJson) printJson(toJson(QuarantinedEventSchema, r.event!));
    else
      process.stdout.write(
        `Replayed ${r.event!.eventType} ${r.event!.eventId} through ${r.event!.consumer}.\n`,
      );
    return 0;
  }
  throw usage(`unknown subcommand events quarantine ${sub}; see --help`);
}

/** `flotilla webhooks`: per-organization endpoints for deployment and database events. */
export async function webhooksCommand(argv: string[]): Promise<number> {
  const specs: OptionSpecs = {
    ...CONNECTION,
    events: {
      type: "string",
      description: "add: comma-separated patterns (default deployment.*,database.*)",
    },
    description: { type: "string", description: "add: a note about the endpoint" },
    endpoint: { type: "string", description: "deliveries: only this endpoint's" },
    limit: { type: "string", description: "deliveries: how many, newest first (default 100)" },
  };
  const { values, positionals } = parseOptions(argv, specs);
  const [sub = "list", arg] = positionals;
  if (values.help)
    return help(
      'flotilla webhooks [list] | add URL [--events deployment.*,database.*] [--description TEXT] | remove ID\n  | deliveries [--endpoint ID] [--limit N]\n\nDeliveries are POSTs signed with flotilla-signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "t.body")>.',
      specs,
    );
  const api = connect(values);
  const asJson = Boolean(values.json);
  if (sub === "list") {
    const r = await api.webhooks.listWebhookEndpoints({});
    if (asJson) printJson(r.endpoints.map((e) => toJson(WebhookEndpointSchema, e)));
    else
      printTable(
        r.endpoints.map((e) => ({
          id: e.id,
          url: e.url,
          events: e.eventTypes.join(","),
          created: when(e.createdAt),
        })),
        ["id", "url", "events", "created"],
      );
    return 0;
  }
  if (sub === "add") {
    if (!arg) throw usage("webhooks add needs a URL");
    const eventTypes = (stringOption(values, "events") ?? "")
      .split(",")
      .map((s) => s.trim())
      .filter(Boolean);
    const r = await api.webhooks.createWebhookEndpoint({
      url: arg,
      eventTypes,
      description: stringOption(values, "description") ?? "",
    });
    if (asJson)
      printJson({ endpoint: toJson(WebhookEndpointSchema, r.endpoint!), secret: r.secret });
    else
      process.stdout.write(
        `Webhook ${r.endpoint!.id} added for ${r.endpoint!.eventTypes.join(", ")}.\nSigning secret (shown once; verify flotilla-signature with it):\n\n  ${r.secret}\n`,
      );
    return 0;
  }
  if (sub === "remove") {
    if (!arg) throw usage("webhooks remove needs the endpoint's ID");
    await api.webhooks.deleteWebhookEndpoint({ id: arg });
    if (asJson) printJson({ removed: arg });
    else process.stdout.write(`Webhook ${arg} removed; its pending deliveries will not be sent.\n`);
    return 0;
  }
  if (sub === "deliveries") {
    const r = await api.webhooks.listWebhookDeliveries({
      endpointId: stringOption(values, "endpoint") ?? "",
      limit: limitOf(values),
    });
    if (asJson) printJson(r.deliveries.map((d) => toJson(WebhookDeliverySchema, d)));
    else
      printTable(
        r.deliveries.map((d) => ({
          id: d.id,
          endpoint: d.endpointId,
          event: d.eventType,
          status: d.status,
          attempts: String(d.attempts),
          last: d.lastStatusCode ? String(d.lastStatusCode) : d.lastError.slice(0, 40),
          created: when(d.createdAt),
        })),
        ["id", "endpoint", "event", "status", "attempts", "last", "created"],
      );
    return 0;
  }
  throw usage(`unknown subcommand webhooks ${sub}; see --help`);
}
