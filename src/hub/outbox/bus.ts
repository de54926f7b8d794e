// The event bus port and its in-process adapters: memory (embedded) and postgres (NOTIFY wake-ups).
import type { Db } from "../../store/index.js";
import { eventsByIds, type StoredEvent } from "./events.js";

export interface EventBus {
  /** Delivers events to every subscriber, on every replica sharing the bus. */
  publish(events: StoredEvent[]): Promise<void>;
  subscribe(fn: (event: StoredEvent) => void): () => void;
  close(): Promise<void>;
}

function listeners() {
  const set = new Set<(event: StoredEvent) => void>();
  return {
    add(fn: (event: StoredEvent) => void) {
      set.add(fn);
      return () => {
        set.delete(fn);
      };
    },
    emit(event: StoredEvent) {
      for (const fn of set) {
        try {
          fn(event);
        } catch {
          // A subscriber's failure is its own; the others still hear the event.
        }
      }
    },
  };
}

/** One process: the embedded mode. */
export function memoryBus(): EventBus {
  const l = listeners();
  return {
    async publish(events) {
      for (const e of events) l.emit(e);
    },
    subscribe: l.add,
    async close() {},
  };
}

export const EVENTS_CHANNEL = "flotilla_events";
// NOTIFY payloads are capped at 8000 bytes; 100 ids of 36 characters plus commas is 3,699.
const IDS_PER_NOTIFY = 100;

/**
 * Several replicas on one PostgreSQL: NOTIFY carries event ids only, every replica (this one
 * included) reads the rows and delivers them to its local subscribers.
 */
export async function postgresBus(db: Db): Promise<EventBus> {
  // PGlite is one connection: publishing from inside the relay's transaction would deadlock.
  if (db.engine !== "postgres") throw new Error("the postgres event bus needs the postgres engine");
  const l = listeners();
  const unlisten = await db.listen(EVENTS_CHANNEL, (payload) => {
    const ids = payload.split(",").filter(Boolean);
    eventsByIds(db, ids).then(
      (events) => {
        for (const e of events) l.emit(e);
      },
      () => {
        // A lost wake-up only delays: watchers replay from their last id on reconnect.
      },
    );
  });
  return {
    async publish(events) {
      for (let i = 0; i < events.length; i += IDS_PER_NOTIFY) {
        const ids = events.slice(i, i + IDS_PER_NOTIFY).map((e) => e.id);
        await db.query("SELECT pg_notify($1, $2)", [EVENTS_CHANNEL, ids.join(",")]);
      }
    },
    subscribe: l.add,
    async close() {
      await unlisten();
    },
  };
}
