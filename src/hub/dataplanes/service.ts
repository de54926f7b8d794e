// Data planes: named groups of servers and gateways, with one default per organization.
import {
  type Caller,
  checkId,
  checkName,
  checkSlug,
  FlotillaError,
  isUniqueViolation,
  notFound,
  uuidv7,
} from "../../shared/index.js";
import type { Db, Queryable } from "../../store/index.js";
import { recordAudit } from "../audit/index.js";

export const DEFAULT_DATA_PLANE = "default";

export interface DataPlane {
  id: string;
  organizationId: string;
  name: string;
  region: string | null;
  isDefault: boolean;
  createdAt: Date;
  updatedAt: Date;
}

interface DataPlaneRow {
  id: string;
  organization_id: string;
  name: string;
  region: string | null;
  is_default: boolean;
  created_at: Date;
  updated_at: Date;
}

const COLUMNS = "id, organization_id, name, region, is_default, created_at, updated_at";
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

const toDataPlane = (r: DataPlaneRow): DataPlane => ({
  id: r.id,
  organizationId: r.organization_id,
  name: r.name,
  region: r.region,
  isDefault: r.is_default,
  createdAt: r.created_at,
  updatedAt: r.updated_at,
});

export class DataPlanesService {
  /**
   * provisionerNames: the provisioners this hub is configured with (the `provisioner` a new data
   * plane may name). Default: only the built-in `local`.
   */
  constructor(
    private readonly db: Db,
    private readonly provisionerNames: () => string[] = () => ["local"],
  ) {}

  /**
   * The organization's default data plane, created on first use. Idempotent under concurrency:
   * two replicas creating it at once both get the one row (the partial unique index decides).
   */
  async defaultFor(q: Queryable, organizationId: string): Promise<DataPlane> {
    await q.query(
      `INSERT INTO data_planes (id, organization_id, name, is_default)
       VALUES ($1, $2, $3, true) ON CONFLICT DO NOTHING`,
      [uuidv7(), organizationId, DEFAULT_DATA_PLANE],
    );
    const { rows } = await q.query<DataPlaneRow>(
      `SELECT ${COLUMNS} FROM data_planes WHERE organization_id = $1 AND is_default`,
      [organizationId],
    );
    if (!rows[0]) throw new Error(`no default data plane for organization ${organizationId}`);
    return toDataPlane(rows[0]);
  }

  async list(c: Caller, q: Queryable = this.db): Promise<DataPlane[]> {
    await this.defaultFor(q, c.organizationId);
    const { rows } = await q.query<DataPlaneRow>(
      `SELECT ${COLUMNS} FROM data_planes WHERE organization_id = $1 ORDER BY is_default DESC, name`,
      [c.organizationId],
    );
    return rows.map(toDataPlane);
  }

  /** By id or name, inside the caller's organization; anything else is not found. */
  async get(
    c: Caller,
    ref: string,
    q: Queryable = this.db,
    field = "data_plane",
  ): Promise<DataPlane> {
    if (!ref) throw new FlotillaError("validation.failed", "is required", { field });
    if (ref === DEFAULT_DATA_PLANE) return this.defaultFor(q, c.organizationId);
    const byId = UUID.test(ref);
    const { rows } = await q.query<DataPlaneRow>(
      `SELECT ${COLUMNS} FROM data_planes WHERE organization_id = $1 AND ${byId ? "id" : "name"} = $2`,
      [c.organizationId, byId ? checkId(field, ref) : ref],
    );
    if (!rows[0]) throw notFound(`data plane ${ref.slice(0, 60)}`);
    return toDataPlane(rows[0]);
  }

  async create(
    c: Caller,
    input: { name: string; region?: string; provisioner?: string },
  ): Promise<DataPlane> {
    const name = checkSlug("name", input.name);
    const region = input.region ? checkName("region", input.region) : null;
    const provisioner = input.provisioner || "local";
    if (!this.provisionerNames().includes(provisioner))
      throw new FlotillaError(
        "validation.failed",
        `provisioner: "${provisioner.slice(0, 40)}" is not configured on this hub (configured: ${this.provisionerNames().join(", ")})`,
        { field: "provisioner" },
      );
    return this.db.tx(async (tx) => {
      await this.defaultFor(tx, c.organizationId);
      try {
        const { rows } = await tx.query<DataPlaneRow>(
          `INSERT INTO data_planes (id, organization_id, name, region, provisioner)
           VALUES ($1, $2, $3, $4, $5) RETURNING ${COLUMNS}`,
          [uuidv7(), c.organizationId, name, region, provisioner],
        );
        const plane = toDataPlane(rows[0]!);
        await recordAudit(tx, {
          organizationId: c.organizationId,
          actor: c.actor,
          action: "data_plane.create",
          target: { type: "data_plane", id: plane.id },
          details: { provisioner },
        });
        return plane;
      } catch (err) {
        if (isUniqueViolation(err))
          throw new FlotillaError(
            "resource.already_exists",
            `a data plane named ${name} already exists`,
            { field: "name" },
          );
        throw err;
      }
    });
  }
}
