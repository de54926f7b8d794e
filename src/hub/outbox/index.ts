// Public entry of the outbox: append events in the business transaction; relay them to the bus.
export { type EventBus, memoryBus, postgresBus } from "./bus.js";
export {
  appendEvent,
  type EventFilter,
  eventsAfter,
  eventsByIds,
  latestEvents,
  type NewEvent,
  type StoredEvent,
} from "./events.js";
export { OutboxRelay, type RelayOptions } from "./relay.js";
