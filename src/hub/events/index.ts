// Public entry of the events module: the NATS JetStream backbone (bus adapter, subjects, stream contracts, consumers, quarantine).
export {
  decodeEvent,
  EVENT_TYPE_HEADER,
  encodeEvent,
  NATS_RELAY_OPTIONS,
  natsBus,
} from "./bus.js";
export {
  CONSUMER_DEFAULTS,
  type ConsumerSpec,
  EventConsumer,
  type HandlerTools,
  payloadRef,
  SERVER_MAX_DELIVER,
} from "./consumer.js";
export { type ConsumerOutcome, type EventMetrics, eventMetrics } from "./metrics.js";
export { NatsBackbone, type NatsOptions, type NatsReadiness } from "./nats.js";
export { type EventsPorts, EventsService, type QuarantinedEvent } from "./service.js";
export {
  checkStream,
  DEFAULT_EVENTS_STREAM,
  type EnsureOutcome,
  ensureStream,
  eventsStreamContract,
  nanos,
  RELAY_RETRY_HORIZON_MS,
  type StreamContract,
  type StreamMismatch,
  streamConfig,
  subjectCovers,
} from "./streams.js";
export {
  allEventsSubject,
  checkSubjectRoot,
  DEFAULT_SUBJECT_ROOT,
  domainEventsSubject,
  eventSubject,
  subjectToken,
} from "./subjects.js";
