// Test support: run one suite against both engines, each with a fresh, migrated store.
import { afterAll, beforeAll, describe } from "vitest";
import { type Db, migrate, openPglite, openPostgres } from "../../src/store/index.js";
import { createTestDatabase, type TestDatabase } from "./pg.js";

export type EngineName = "pglite" | "postgres";
export const ENGINES: EngineName[] = ["pglite", "postgres"];

export async function openTestStore(
  engine: EngineName,
  label: string,
): Promise<{ db: Db; cleanup(): Promise<void> }> {
  if (engine === "pglite") {
    const db = await openPglite("memory://");
    await migrate(db);
    return { db, cleanup: () => db.close() };
  }
  const database: TestDatabase = await createTestDatabase(label);
  const db = openPostgres(database.url, { max: 5 });
  await migrate(db);
  return {
    db,
    async cleanup() {
      await db.close();
      await database.drop();
    },
  };
}

/** describe() once per engine; `store()` returns that engine's migrated Db inside tests. */
export function describeEachEngine(
  name: string,
  fn: (store: () => Db, engine: EngineName) => void,
): void {
  for (const engine of ENGINES) {
    describe(`${name} [${engine}]`, () => {
      let opened: { db: Db; cleanup(): Promise<void> } | undefined;
      beforeAll(async () => {
        opened = await openTestStore(engine, name);
      });
      afterAll(async () => {
        await opened?.cleanup();
      });
      fn(() => {
        if (!opened) throw new Error("store not open yet");
        return opened.db;
      }, engine);
    });
  }
}
