// Public entry of the webhooks module: endpoints, signed deliveries with retries, and the signature helpers.
export {
  type DestinationPolicy,
  DestinationRefused,
  resolveDestination,
} from "./destinations.js";
export type { Sealer, WebhookAudit } from "./ports.js";
export {
  DEFAULT_EVENT_TYPES,
  type DeliveryOptions,
  matchesEventType,
  type WebhookDelivery,
  type WebhookEndpoint,
  WebhooksService,
} from "./service.js";
export { SIGNATURE_HEADER, signWebhook, verifyWebhook } from "./signing.js";
