// Data planes on both engines: one default per organization (even when created concurrently), names
// unique per organization, lookups confined to the caller's organization, and a server's data plane
// kept inside its own organization by the database.
import { expect, it } from "vitest";
import { DataPlanesService } from "../../src/hub/dataplanes/index.js";
import type { Caller } from "../../src/shared/index.js";
import { uuidv7 } from "../../src/shared/index.js";
import type { Db } from "../../src/store/index.js";
import { describeEachEngine } from "../support/engines.js";

async function organization(db: Db, slug: string): Promise<Caller> {
  const id = uuidv7();
  await db.query("INSERT INTO organizations (id, slug, name) VALUES ($1, $2, $3)", [
    id,
    slug,
    slug,
  ]);
  return { organizationId: id, actor: { type: "user", id: uuidv7() } };
}

async function serverIn(db: Db, organizationId: string, name: string): Promise<string> {
  const id = uuidv7();
  await db.query(
    `INSERT INTO servers (id, organization_id, name, secret_sealed, secret_key_id)
     VALUES ($1, $2, $3, '\\x00'::bytea, 'k')`,
    [id, organizationId, name],
  );
  return id;
}

describeEachEngine("data planes", (store) => {
  it("creates exactly one default data plane per organization, even when asked concurrently", async () => {
    const db = store();
    const planes = new DataPlanesService(db);
    const a = await organization(db, "planes-a");
    const got = await Promise.all(
      Array.from({ length: 6 }, () => planes.defaultFor(db, a.organizationId)),
    );
    expect(new Set(got.map((p) => p.id)).size).toBe(1);
    expect(got[0]).toMatchObject({ name: "default", isDefault: true });
    const { rows } = await db.query<{ n: number }>(
      "SELECT count(*)::int AS n FROM data_planes WHERE organization_id = $1",
      [a.organizationId],
    );
    expect(rows[0]!.n).toBe(1);
  });

  it("refuses a duplicate name and a malformed one, writing nothing", async () => {
    const db = store();
    const planes = new DataPlanesService(db);
    const a = await organization(db, "planes-dup");
    await planes.create(a, { name: "eu-west", region: "Europe (Ireland)" });
    await expect(planes.create(a, { name: "eu-west" })).rejects.toMatchObject({
      code: "resource.already_exists",
      field: "name",
    });
    await expect(planes.create(a, { name: "Not A Slug" })).rejects.toMatchObject({
      code: "validation.failed",
      field: "name",
    });
    expect((await planes.list(a)).map((p) => p.name)).toEqual(["default", "eu-west"]);
  });

  it("answers not-found for another organization's data plane, by id and by name", async () => {
    const db = store();
    const planes = new DataPlanesService(db);
    const a = await organization(db, "planes-owner");
    const b = await organization(db, "planes-other");
    const mine = await planes.create(a, { name: "private-dc" });
    await expect(planes.get(b, mine.id)).rejects.toMatchObject({ code: "resource.not_found" });
    await expect(planes.get(b, "private-dc")).rejects.toMatchObject({
      code: "resource.not_found",
    });
    expect((await planes.get(a, "private-dc")).id).toBe(mine.id);
  });

  it("keeps a server's data plane inside its organization and releases it when the plane goes", async () => {
    const db = store();
    const planes = new DataPlanesService(db);
    const a = await organization(db, "planes-srv-a");
    const b = await organization(db, "planes-srv-b");
    const theirs = await planes.create(b, { name: "theirs" });
    const ours = await planes.create(a, { name: "ours" });
    const server = await serverIn(db, a.organizationId, "box1");
    await expect(
      db.query("UPDATE servers SET data_plane_id = $1 WHERE id = $2", [theirs.id, server]),
    ).rejects.toMatchObject({ code: "23503" });
    await db.query("UPDATE servers SET data_plane_id = $1 WHERE id = $2", [ours.id, server]);
    await db.query("DELETE FROM data_planes WHERE id = $1", [ours.id]);
    const { rows } = await db.query<{ organization_id: string; data_plane_id: string | null }>(
      "SELECT organization_id, data_plane_id FROM servers WHERE id = $1",
      [server],
    );
    expect(rows[0]).toEqual({ organization_id: a.organizationId, data_plane_id: null });
  });
});
