// Gateways: edge proxies in a data plane, each with its own token (random, shown once, stored hashed).
import { createHash, randomBytes } from "node:crypto";
import {
  type Caller,
  checkId,
  checkSlug,
  FlotillaError,
  invalid,
  isUniqueViolation,
  isUuid,
  notFound,
  uuidv7,
} from "../../shared/index.js";
import type { Db, Queryable } from "../../store/index.js";
import { recordAudit } from "../audit/index.js";
import type { DataPlanePort } from "./ports.js";

export interface Gateway {
  id: string;
  organizationId: string;
  dataPlaneId: string;
  name: string;
  lastSeenAt: Date | null;
  createdAt: Date;
}

interface GatewayRow {
  id: string;
  organization_id: string;
  data_plane_id: string;
  name: string;
  last_seen_at: Date | null;
  created_at: Date;
}

const COLUMNS = "id, organization_id, data_plane_id, name, last_seen_at, created_at";
export const GATEWAY_TOKEN_PREFIX = "fgw_";
const sha256 = (text: string) => createHash("sha256").update(text).digest();
// A token is the prefix plus 43 base64url characters (32 random bytes).
const TOKEN = /^fgw_[A-Za-z0-9_-]{43}$/;

const toGateway = (r: GatewayRow): Gateway => ({
  id: r.id,
  organizationId: r.organization_id,
  dataPlaneId: r.data_plane_id,
  name: r.name,
  lastSeenAt: r.last_seen_at,
  createdAt: r.created_at,
});

export class GatewaysService {
  constructor(
    private readonly db: Db,
    private readonly dataPlanes: DataPlanePort,
  ) {}

  async create(
    c: Caller,
    input: { name: string; dataPlane?: string },
  ): Promise<{ gateway: Gateway; token: string }> {
    const name = checkSlug("name", input.name);
    return this.db.tx(async (tx) => {
      const plane = await this.dataPlanes.get(c, input.dataPlane || "default", tx);
      const token = `${GATEWAY_TOKEN_PREFIX}${randomBytes(32).toString("base64url")}`;
      try {
        const { rows } = await tx.query<GatewayRow>(
          `INSERT INTO gateways (id, organization_id, data_plane_id, name, token_hash)
           VALUES ($1, $2, $3, $4, $5) RETURNING ${COLUMNS}`,
          [uuidv7(), c.organizationId, plane.id, name, sha256(token)],
        );
        const gateway = toGateway(rows[0]!);
        await recordAudit(tx, {
          organizationId: c.organizationId,
          actor: c.actor,
          action: "gateway.create",
          target: { type: "gateway", id: gateway.id },
          details: { name, data_plane_id: plane.id },
        });
        return { gateway, token };
      } catch (err) {
        if (isUniqueViolation(err))
          throw new FlotillaError(
            "resource.already_exists",
            `a gateway named ${name} already exists`,
            {
              field: "name",
            },
          );
        throw err;
      }
    });
  }

  async list(c: Caller): Promise<Gateway[]> {
    const { rows } = await this.db.query<GatewayRow>(
      `SELECT ${COLUMNS} FROM gateways WHERE organization_id = $1 ORDER BY name`,
      [c.organizationId],
    );
    return rows.map(toGateway);
  }

  async get(c: Caller, ref: string, q: Queryable = this.db, field = "gateway"): Promise<Gateway> {
    if (!ref) throw invalid(field, "is required");
    const byId = isUuid(ref);
    const { rows } = await q.query<GatewayRow>(
      `SELECT ${COLUMNS} FROM gateways WHERE organization_id = $1 AND ${byId ? "id" : "name"} = $2`,
      [c.organizationId, byId ? checkId(field, ref) : ref],
    );
    if (!rows[0]) throw notFound(`gateway ${ref.slice(0, 60)}`);
    return toGateway(rows[0]);
  }

  async remove(c: Caller, ref: string): Promise<void> {
    await this.db.tx(async (tx) => {
      const g = await this.get(c, ref, tx);
      await tx.query("DELETE FROM gateways WHERE id = $1", [g.id]);
      await recordAudit(tx, {
        organizationId: c.organizationId,
        actor: c.actor,
        action: "gateway.delete",
        target: { type: "gateway", id: g.id },
        details: { name: g.name },
      });
    });
  }

  /** The gateway a token belongs to, or null; stamps last_seen_at (observed, the gateway's own write). */
  async authenticate(token: string): Promise<Gateway | null> {
    if (!TOKEN.test(token)) return null;
    const { rows } = await this.db.query<GatewayRow>(
      `UPDATE gateways SET last_seen_at = now() WHERE token_hash = $1 RETURNING ${COLUMNS}`,
      [sha256(token)],
    );
    return rows[0] ? toGateway(rows[0]) : null;
  }

  /** Gateways of one data plane (public service routes go to each of them). */
  async inDataPlane(q: Queryable, organizationId: string, dataPlaneId: string): Promise<Gateway[]> {
    const { rows } = await q.query<GatewayRow>(
      `SELECT ${COLUMNS} FROM gateways WHERE organization_id = $1 AND data_plane_id = $2 ORDER BY id`,
      [organizationId, dataPlaneId],
    );
    return rows.map(toGateway);
  }
}
