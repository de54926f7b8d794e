// The backfill migration (0011) on both engines: a database stopped at 0010 with legacy
// `private_links` arrays is migrated; valid arrays become rows in order (the projection then equals
// the rows), and an entry with no identity, an unknown shape or a duplicate aborts the whole
// migration with a message naming the data plane and position, changing nothing.
import { afterEach, describe, expect, it } from "vitest";
import { uuidv7 } from "../../src/shared/index.js";
import {
  type Db,
  loadMigrations,
  migrate,
  openPglite,
  openPostgres,
} from "../../src/store/index.js";
import { ENGINES, type EngineName } from "../support/engines.js";
import { createTestDatabase } from "../support/pg.js";

const BEFORE_BACKFILL = loadMigrations().filter((m) => m.version <= 10);

const AWS = {
  region: "us-east-1",
  az_ids: ["use1-az1", "use1-az2"],
  service_name: "com.amazonaws.vpce.us-east-1.vpce-svc-0aaa",
};
const AZURE = {
  service_name: "sql.alias.azure.privatelinkservice",
  location: "eastus",
  dns_name: "db.example.com",
};
const GCP = {
  service_attachment: "projects/p/regions/us-central1/serviceAttachments/db",
  region: "us-central1",
  dns_zone_name: "db.internal.",
  dns_record_names: ["a.db.internal."],
};

for (const engine of ENGINES) {
  describe(`private_links backfill [${engine}]`, () => {
    const cleanups: Array<() => Promise<void>> = [];
    afterEach(async () => {
      for (const c of cleanups.splice(0)) await c();
    });

    /** A store migrated up to 0010 with one organization and data planes holding these arrays. */
    async function legacy(
      arrays: Record<string, unknown[]>,
    ): Promise<{ db: Db; planes: Record<string, string> }> {
      let db: Db;
      if ((engine as EngineName) === "pglite") {
        db = await openPglite("memory://");
        cleanups.push(() => db.close());
      } else {
        const database = await createTestDatabase("backfill");
        const pgDb = openPostgres(database.url, { max: 3 });
        db = pgDb;
        cleanups.push(async () => {
          await pgDb.close();
          await database.drop();
        });
      }
      await migrate(db, BEFORE_BACKFILL);
      const org = uuidv7();
      await db.query("INSERT INTO organizations (id, slug, name) VALUES ($1, 'legacy', 'Legacy')", [
        org,
      ]);
      const planes: Record<string, string> = {};
      for (const [name, array] of Object.entries(arrays)) {
        planes[name] = uuidv7();
        // What a legacy writer did: the array, written directly.
        await db.query(
          "INSERT INTO data_planes (id, organization_id, name, private_links) VALUES ($1, $2, $3, $4)",
          [planes[name], org, name, JSON.stringify(array)],
        );
      }
      return { db, planes };
    }

    const rowsOf = async (db: Db, plane: string) =>
      (
        await db.query<{
          provider: string;
          config: unknown;
          service_identity: string;
          generation: number;
          status: string;
        }>(
          `SELECT provider, config, service_identity, generation, status FROM data_plane_private_links
           WHERE data_plane_id = $1 ORDER BY created_at, id`,
          [plane],
        )
      ).rows;
    const arrayOf = async (db: Db, plane: string) =>
      (
        await db.query<{ private_links: unknown[] }>(
          "SELECT private_links FROM data_planes WHERE id = $1",
          [plane],
        )
      ).rows[0]!.private_links;
    const applied = async (db: Db) =>
      (
        await db.query<{ version: number }>(
          "SELECT version FROM flotilla_migrations ORDER BY version",
        )
      ).rows.map((r) => r.version);

    it("on a database with no legacy arrays (a fresh one) it applies and inserts nothing", async () => {
      const { db, planes } = await legacy({ empty: [] });
      expect((await migrate(db)).applied).toContain(11);
      expect(await rowsOf(db, planes.empty!)).toEqual([]);
      expect(await arrayOf(db, planes.empty!)).toEqual([]);
    });

    it("valid arrays (untagged and tagged elements) become rows in array order, pending, and the array stays equal to the rows", async () => {
      const { db, planes } = await legacy({
        eu: [AWS, AZURE, GCP],
        us: [
          { provider: "aws", ...AWS, service_name: "com.amazonaws.vpce.us-east-1.vpce-svc-0bbb" },
        ],
      });
      await migrate(db);
      const eu = await rowsOf(db, planes.eu!);
      expect(eu).toEqual([
        {
          provider: "aws",
          config: AWS,
          service_identity: AWS.service_name,
          generation: 1,
          status: "pending",
        },
        {
          provider: "azure",
          config: AZURE,
          service_identity: AZURE.service_name,
          generation: 1,
          status: "pending",
        },
        {
          provider: "gcp",
          config: GCP,
          service_identity: GCP.service_attachment,
          generation: 1,
          status: "pending",
        },
      ]);
      expect(await arrayOf(db, planes.eu!)).toEqual(eu.map((r) => r.config));
      // The tag is dropped: the projection is the legacy, untagged shape.
      expect(await arrayOf(db, planes.us!)).toEqual([
        { ...AWS, service_name: "com.amazonaws.vpce.us-east-1.vpce-svc-0bbb" },
      ]);
      // Each backfilled data plane has a converge request, so the controller observes the rows.
      const { rows } = await db.query<{ n: number }>(
        "SELECT count(*)::int AS n FROM data_plane_converge_requests WHERE requested > converged",
      );
      expect(rows[0]!.n).toBe(2);
    });

    const aborts: Array<[string, Record<string, unknown[]>, RegExp]> = [
      [
        "a duplicate identity",
        { ok: [AWS], dup: [GCP, AWS, { ...AWS, az_ids: ["use1-az3"] }] },
        /data plane dup \(.*\): private_links\[2\]: duplicate: another aws link on this data plane has service_name com\.amazonaws\.vpce\.us-east-1\.vpce-svc-0aaa/,
      ],
      [
        "an entry with no identity",
        { noid: [AWS, { region: "us-east-1", az_ids: ["use1-az1"] }] },
        /data plane noid \(.*\): private_links\[1\]: no service identity: a aws link needs a non-empty string service_name/,
      ],
      [
        "an entry with an empty identity",
        { blank: [{ ...GCP, service_attachment: "  " }] },
        /private_links\[0\]: no service identity: a gcp link needs a non-empty string service_attachment/,
      ],
      [
        "an entry of unknown shape",
        { odd: [AZURE, { endpoint: "10.0.0.1", port: 5432 }] },
        /data plane odd \(.*\): private_links\[1\]: unknown shape \(keys: endpoint, port\)/,
      ],
      [
        "an entry mixing two providers' fields",
        { mixed: [{ ...AWS, location: "eastus" }] },
        /private_links\[0\]: unknown shape/,
      ],
      [
        "an entry that is not an object",
        { scalar: ["vpce-svc-0aaa"] },
        /private_links\[0\]: is a JSON string, not an object/,
      ],
      [
        "an entry tagged with an unknown provider",
        { tagged: [{ provider: "oracle", service_name: "x" }] },
        /private_links\[0\]: unknown shape: provider 'oracle' is not aws, azure or gcp/,
      ],
    ];
    it.each(aborts)(
      "aborts on %s with a message naming the data plane and position, and changes nothing",
      async (_, arrays, message) => {
        const { db, planes } = await legacy(arrays);
        const before = await Promise.all(Object.values(planes).map((p) => arrayOf(db, p)));
        await expect(migrate(db)).rejects.toThrow(message);
        expect(await applied(db)).toEqual(BEFORE_BACKFILL.map((m) => m.version));
        const { rows } = await db.query<{ n: number }>(
          "SELECT count(*)::int AS n FROM data_plane_private_links",
        );
        expect(rows[0]!.n).toBe(0);
        expect(await Promise.all(Object.values(planes).map((p) => arrayOf(db, p)))).toEqual(before);
      },
    );
  });
}
