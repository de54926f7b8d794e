// Connect handlers for EventsService (quarantine list and replay) and WebhooksService (endpoints, deliveries).
import type { ConnectRouter } from "@connectrpc/connect";
import {
  EventsService as EventsRpc,
  WebhooksService as WebhooksRpc,
} from "../../gen/flotilla/v1/events_pb.js";
import type { EventsService, QuarantinedEvent } from "../events/index.js";
import type { WebhookDelivery, WebhookEndpoint, WebhooksService } from "../webhooks/index.js";
import { caller, ts } from "./handler-context.js";

const quarantined = (q: QuarantinedEvent) => ({
  id: q.id,
  consumer: q.consumer,
  stream: q.stream,
  subject: q.subject,
  streamSeq: BigInt(q.streamSeq),
  eventId: q.eventId ?? "",
  eventType: q.eventType ?? "",
  deliveries: q.deliveries,
  reason: q.reason,
  payloadRef: q.payloadRef,
  state: q.state,
  replayedAt: ts(q.replayedAt),
  createdAt: ts(q.createdAt),
});

const endpoint = (e: WebhookEndpoint) => ({
  id: e.id,
  url: e.url,
  eventTypes: e.eventTypes,
  description: e.description,
  createdBy: e.createdBy,
  createdAt: ts(e.createdAt),
});

const delivery = (d: WebhookDelivery) => ({
  id: d.id,
  endpointId: d.endpointId,
  eventId: d.eventId,
  eventType: d.eventType,
  status: d.status,
  attempts: d.attempts,
  nextAttemptAt: ts(d.nextAttemptAt),
  lastStatusCode: d.lastStatusCode ?? 0,
  lastError: d.lastError ?? "",
  deliveredAt: ts(d.deliveredAt),
  createdAt: ts(d.createdAt),
});

export function eventsRoutes(
  router: ConnectRouter,
  o: { events: EventsService; webhooks: WebhooksService },
): void {
  router.service(EventsRpc, {
    async listQuarantinedEvents(req, ctx) {
      const list = await o.events.listQuarantined(caller(ctx), {
        consumer: req.consumer,
        includeReplayed: req.includeReplayed,
        limit: req.limit,
      });
      return { events: list.map(quarantined) };
    },
    async replayQuarantinedEvent(req, ctx) {
      return { event: quarantined(await o.events.replay(caller(ctx), req.id)) };
    },
  });
  router.service(WebhooksRpc, {
    async createWebhookEndpoint(req, ctx) {
      const r = await o.webhooks.create(caller(ctx), {
        url: req.url,
        eventTypes: req.eventTypes,
        description: req.description,
      });
      return { endpoint: endpoint(r.endpoint), secret: r.secret };
    },
    async listWebhookEndpoints(_req, ctx) {
      return { endpoints: (await o.webhooks.list(caller(ctx))).map(endpoint) };
    },
    async deleteWebhookEndpoint(req, ctx) {
      await o.webhooks.remove(caller(ctx), req.id);
      return {};
    },
    async listWebhookDeliveries(req, ctx) {
      const list = await o.webhooks.deliveries(caller(ctx), {
        endpointId: req.endpointId,
        limit: req.limit,
      });
      return { deliveries: list.map(delivery) };
    },
  });
}
