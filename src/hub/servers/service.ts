// Servers: join tokens, enrolment, the agent's proof of its secret, and control-channel affinity.
import { createHash, randomBytes } from "node:crypto";
import {
  type AgentFacts,
  actorLabel,
  authProof,
  type Caller,
  checkSlug,
  directKey,
  directSealKey,
  FlotillaError,
  invalid,
  isUniqueViolation,
  notFound,
  proofMatches,
  uuidv7,
} from "../../shared/index.js";
import type { Db, Queryable } from "../../store/index.js";
import { recordAudit } from "../audit/index.js";
import { appendEvent } from "../outbox/index.js";
import type { SecretSealer } from "./ports.js";

export const JOIN_TOKEN_PREFIX = "fjt_";
const DEFAULT_JOIN_TTL_SECONDS = 3600;
const MAX_JOIN_TTL_SECONDS = 7 * 86_400;
/** An owner whose heartbeat is older than this is presumed dead (seed 002's default). */
export const HEARTBEAT_FRESHNESS_MS = 90_000;

export interface Server {
  id: string;
  organizationId: string;
  name: string;
  status: "online" | "offline";
  connectedHubId: string | null;
  sessionId: string | null;
  connectedAt: Date | null;
  lastHeartbeat: Date | null;
  agentVersion: string | null;
  drivers: string[];
  cores: number | null;
  memoryBytes: number | null;
  diskFreeBytes: number | null;
  /** The admin endpoint the agent advertised in its last hello (route() "direct"), if any. */
  adminUrl: string | null;
  createdAt: Date;
}

interface ServerRow {
  id: string;
  organization_id: string;
  name: string;
  status: "online" | "offline";
  connected_hub_id: string | null;
  session_id: string | null;
  connected_at: Date | null;
  last_heartbeat: Date | null;
  agent_version: string | null;
  drivers: string[];
  cores: number | null;
  memory_bytes: string | number | null;
  disk_free_bytes: string | number | null;
  admin_url: string | null;
  created_at: Date;
}

const SERVER_COLUMNS = `id, organization_id, name, status, connected_hub_id, session_id, connected_at,
  last_heartbeat, agent_version, drivers, cores, memory_bytes, disk_free_bytes, admin_url, created_at`;

const num = (v: string | number | null) => (v === null ? null : Number(v));
const toServer = (r: ServerRow): Server => ({
  id: r.id,
  organizationId: r.organization_id,
  name: r.name,
  status: r.status,
  connectedHubId: r.connected_hub_id,
  sessionId: r.session_id,
  connectedAt: r.connected_at,
  lastHeartbeat: r.last_heartbeat,
  agentVersion: r.agent_version,
  drivers: r.drivers,
  cores: r.cores,
  memoryBytes: num(r.memory_bytes),
  diskFreeBytes: num(r.disk_free_bytes),
  adminUrl: r.admin_url,
  createdAt: r.created_at,
});

const sha256 = (text: string) => createHash("sha256").update(text).digest();
const secretAad = (serverId: string) => `flotilla/server-secret/${serverId}`;
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

export class ServersService {
  constructor(
    private readonly db: Db,
    private readonly sealer: SecretSealer,
  ) {}

  async createJoinToken(
    c: Caller,
    nameText: string,
    ttlSeconds: number,
  ): Promise<{ token: string; expiresAt: Date }> {
    const name = checkSlug("name", nameText);
    const ttl = ttlSeconds || DEFAULT_JOIN_TTL_SECONDS;
    if (!Number.isInteger(ttl) || ttl < 60 || ttl > MAX_JOIN_TTL_SECONDS)
      throw invalid("ttl_seconds", `must be from 60 to ${MAX_JOIN_TTL_SECONDS}`);
    const token = `${JOIN_TOKEN_PREFIX}${randomBytes(32).toString("base64url")}`;
    return this.db.tx(async (tx) => {
      const taken = await tx.query(
        "SELECT 1 FROM servers WHERE organization_id = $1 AND name = $2",
        [c.organizationId, name],
      );
      if (taken.rows[0])
        throw new FlotillaError(
          "resource.already_exists",
          `a server named ${name} already exists`,
          {
            field: "name",
          },
        );
      const id = uuidv7();
      const { rows } = await tx.query<{ expires_at: Date }>(
        `INSERT INTO join_tokens (id, organization_id, token_hash, server_name, created_by, expires_at)
         VALUES ($1, $2, $3, $4, $5, now() + make_interval(secs => $6)) RETURNING expires_at`,
        [id, c.organizationId, sha256(token), name, actorLabel(c), ttl],
      );
      await recordAudit(tx, {
        organizationId: c.organizationId,
        actor: c.actor,
        action: "server.join_token_create",
        target: { type: "join_token", id },
        details: { name, ttl_seconds: ttl },
      });
      return { token, expiresAt: rows[0]!.expires_at };
    });
  }

  /**
   * Exchanges a one-time join token for a new server and its secret. The token is consumed by a
   * compare-and-set, so two agents racing with one token get one server.
   */
  async join(
    tokenText: string,
    facts: Partial<AgentFacts>,
  ): Promise<{ server: Server; secret: string }> {
    if (typeof tokenText !== "string" || !tokenText.startsWith(JOIN_TOKEN_PREFIX))
      throw new FlotillaError("auth.unauthenticated", "the join token is missing or malformed");
    return this.db.tx(async (tx) => {
      const serverId = uuidv7();
      const { rows } = await tx.query<{ id: string; organization_id: string; server_name: string }>(
        `UPDATE join_tokens SET used_at = now(), server_id = $2
         WHERE token_hash = $1 AND used_at IS NULL AND expires_at > now()
         RETURNING id, organization_id, server_name`,
        [sha256(tokenText), serverId],
      );
      const grant = rows[0];
      if (!grant)
        throw new FlotillaError(
          "auth.unauthenticated",
          "the join token is unknown, expired or already used; create a new one with `flotilla servers add`",
        );
      const secret = randomBytes(32).toString("base64url");
      const sealed = this.sealer.seal(secret, secretAad(serverId));
      let row: ServerRow;
      try {
        const inserted = await tx.query<ServerRow>(
          `INSERT INTO servers (id, organization_id, name, secret_sealed, secret_key_id, agent_version, drivers,
                                cores, memory_bytes, disk_free_bytes)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING ${SERVER_COLUMNS}`,
          [
            serverId,
            grant.organization_id,
            grant.server_name,
            sealed.sealed,
            sealed.keyId,
            facts.agent_version ?? null,
            JSON.stringify(facts.drivers ?? []),
            facts.cores ?? null,
            facts.memory_bytes ?? null,
            facts.disk_free_bytes ?? null,
          ],
        );
        row = inserted.rows[0]!;
      } catch (err) {
        if (isUniqueViolation(err))
          throw new FlotillaError(
            "resource.already_exists",
            `a server named ${grant.server_name} already exists`,
            { field: "name" },
          );
        throw err;
      }
      await recordAudit(tx, {
        organizationId: grant.organization_id,
        actor: { type: "system", id: `join_token:${grant.id}` },
        action: "server.join",
        target: { type: "server", id: serverId },
        details: { name: grant.server_name },
      });
      await appendEvent(tx, {
        organizationId: grant.organization_id,
        type: "server.joined",
        subjectId: serverId,
        payload: { server_id: serverId, name: grant.server_name },
      });
      return { server: toServer(row), secret };
    });
  }

  /** Checks an agent's proof over the nonce the hub sent; the secret never crosses the wire. */
  async verifyProof(serverId: string, nonce: string, proof: string): Promise<Server | null> {
    const { rows } = await this.db.query<
      ServerRow & { secret_sealed: Buffer; secret_key_id: string }
    >(`SELECT ${SERVER_COLUMNS}, secret_sealed, secret_key_id FROM servers WHERE id = $1`, [
      serverId,
    ]);
    const row = rows[0];
    if (!row) return null;
    const secret = this.sealer.open(row.secret_sealed, row.secret_key_id, secretAad(serverId));
    return proofMatches(authProof(secret, serverId, nonce), proof) ? toServer(row) : null;
  }

  /**
   * Both keys of the direct route to this server's agent, derived from its secret (which never
   * leaves this process): the request signing key and the dispatch sealing key; null for an
   * unknown server.
   */
  async directKeys(serverId: string): Promise<{ signing: Buffer; sealing: Buffer } | null> {
    const { rows } = await this.db.query<{ secret_sealed: Buffer; secret_key_id: string }>(
      "SELECT secret_sealed, secret_key_id FROM servers WHERE id = $1",
      [serverId],
    );
    const row = rows[0];
    if (!row) return null;
    const secret = this.sealer.open(row.secret_sealed, row.secret_key_id, secretAad(serverId));
    return { signing: directKey(secret, serverId), sealing: directSealKey(secret, serverId) };
  }

  /** Affinity and reachability of one server, for route(): no tenant check (internal use). */
  async routing(serverId: string): Promise<Server | null> {
    const { rows } = await this.db.query<ServerRow>(
      `SELECT ${SERVER_COLUMNS} FROM servers WHERE id = $1`,
      [serverId],
    );
    return rows[0] ? toServer(rows[0]) : null;
  }

  /** Newest connection wins: affinity, session, online and heartbeat in one write. */
  async claim(
    serverId: string,
    hubId: string,
    sessionId: string,
    facts: AgentFacts,
  ): Promise<Server> {
    const { rows } = await this.db.query<ServerRow>(
      `UPDATE servers SET connected_hub_id = $2, session_id = $3, connected_at = now(), status = 'online',
              last_heartbeat = now(), agent_version = $4, drivers = $5, cores = $6, memory_bytes = $7,
              disk_free_bytes = $8, admin_url = $9
       WHERE id = $1 RETURNING ${SERVER_COLUMNS}`,
      [
        serverId,
        hubId,
        sessionId,
        facts.agent_version,
        JSON.stringify(facts.drivers),
        facts.cores,
        facts.memory_bytes,
        facts.disk_free_bytes,
        facts.admin_url ?? null,
      ],
    );
    if (!rows[0]) throw notFound(`server ${serverId}`);
    return toServer(rows[0]);
  }

  /**
   * Release and the offline stamp in one compare-and-set that holds only while the row still
   * names this hub and session: a late disconnect of an old connection changes nothing.
   */
  async release(serverId: string, hubId: string, sessionId: string): Promise<boolean> {
    const { rows } = await this.db.query(
      `UPDATE servers SET status = 'offline', connected_hub_id = NULL, session_id = NULL, disconnected_at = now()
       WHERE id = $1 AND connected_hub_id = $2 AND session_id = $3 RETURNING id`,
      [serverId, hubId, sessionId],
    );
    return rows.length > 0;
  }

  /** Refreshes liveness for the session that owns the row; false when another session took over. */
  async heartbeat(
    serverId: string,
    hubId: string,
    sessionId: string,
    facts: Partial<AgentFacts>,
  ): Promise<boolean> {
    const { rows } = await this.db.query(
      `UPDATE servers SET last_heartbeat = now(), cores = coalesce($4, cores),
              memory_bytes = coalesce($5, memory_bytes), disk_free_bytes = coalesce($6, disk_free_bytes)
       WHERE id = $1 AND connected_hub_id = $2 AND session_id = $3 RETURNING id`,
      [
        serverId,
        hubId,
        sessionId,
        facts.cores ?? null,
        facts.memory_bytes ?? null,
        facts.disk_free_bytes ?? null,
      ],
    );
    return rows.length > 0;
  }

  async list(c: Caller): Promise<Server[]> {
    const { rows } = await this.db.query<ServerRow>(
      `SELECT ${SERVER_COLUMNS} FROM servers WHERE organization_id = $1 ORDER BY name`,
      [c.organizationId],
    );
    return rows.map(toServer);
  }

  /** An organization's servers, for internal views (the fleet probe); no caller needed. */
  async listIn(organizationId: string): Promise<Server[]> {
    const { rows } = await this.db.query<ServerRow>(
      `SELECT ${SERVER_COLUMNS} FROM servers WHERE organization_id = $1 ORDER BY name`,
      [organizationId],
    );
    return rows.map(toServer);
  }

  /**
   * The organization's servers by data plane id; a server with no data plane is listed under
   * defaultPlaneId (it belongs to the default data plane).
   */
  async byDataPlane(
    c: Caller,
    defaultPlaneId: string,
  ): Promise<Map<string, Array<{ id: string; name: string }>>> {
    const { rows } = await this.db.query<{
      id: string;
      name: string;
      data_plane_id: string | null;
    }>("SELECT id, name, data_plane_id FROM servers WHERE organization_id = $1 ORDER BY name", [
      c.organizationId,
    ]);
    const out = new Map<string, Array<{ id: string; name: string }>>();
    for (const r of rows) {
      const plane = r.data_plane_id ?? defaultPlaneId;
      out.set(plane, [...(out.get(plane) ?? []), { id: r.id, name: r.name }]);
    }
    return out;
  }

  /** By id or name, in the caller's organization; anything else is not found. */
  async get(c: Caller, ref: string, q: Queryable = this.db, field = "server"): Promise<Server> {
    if (!ref) throw invalid(field, "is required");
    const byId = UUID.test(ref);
    const { rows } = await q.query<ServerRow>(
      `SELECT ${SERVER_COLUMNS} FROM servers WHERE organization_id = $1 AND ${byId ? "id = $2::uuid" : "name = $2"}`,
      [c.organizationId, byId ? ref.toLowerCase() : ref],
    );
    if (!rows[0]) throw notFound(`server ${ref}`);
    return toServer(rows[0]);
  }

  /**
   * Servers whose owner stopped heartbeating (a replica that died without releasing them) go
   * offline, so routing stops trusting a dead owner. Returns their ids.
   */
  async reapStale(freshnessMs = HEARTBEAT_FRESHNESS_MS): Promise<string[]> {
    const { rows } = await this.db.query<{ id: string }>(
      `UPDATE servers SET status = 'offline', connected_hub_id = NULL, session_id = NULL, disconnected_at = now()
       WHERE status = 'online' AND last_heartbeat < now() - make_interval(secs => $1) RETURNING id`,
      [freshnessMs / 1000],
    );
    return rows.map((r) => r.id);
  }

  /** The organization's server when it has exactly one (a laptop's `flotilla up`), else null. */
  async onlyServer(c: Caller, q: Queryable = this.db): Promise<string | null> {
    const { rows } = await q.query<{ id: string }>(
      "SELECT id FROM servers WHERE organization_id = $1 LIMIT 2",
      [c.organizationId],
    );
    return rows.length === 1 ? rows[0]!.id : null;
  }

  async remove(c: Caller, ref: string): Promise<Server> {
    return this.db.tx(async (tx) => {
      const server = await this.get(c, ref, tx);
      await tx.query("DELETE FROM servers WHERE id = $1 AND organization_id = $2", [
        server.id,
        c.organizationId,
      ]);
      await recordAudit(tx, {
        organizationId: c.organizationId,
        actor: c.actor,
        action: "server.delete",
        target: { type: "server", id: server.id },
        details: { name: server.name },
      });
      await appendEvent(tx, {
        organizationId: c.organizationId,
        type: "server.deleted",
        subjectId: server.id,
        payload: { server_id: server.id, name: server.name },
      });
      return server;
    });
  }
}
