// Test support: a fixture generator that puts at least one row into every table the migrations
// create, with the edge cases a copy or a schema change tends to break: NULL optionals, maximum
// lengths the CHECK constraints allow, unicode (emoji, CJK, RTL, combining marks), nested JSON,
// bytea, a secret config entry, a rollback deployment and a service whose desired deployment is
// inserted after it (deferred foreign key). Deterministic: the same ids and values every run, so a
// test can seed one database, copy or migrate it, and compare against FIXTURES.
//
// Adding a migration with a new table? Add its rows to FIXTURES below, in foreign-key order;
// test/store/fixtures.test.ts fails on both engines until every table has at least one row.
import type { Db, Queryable } from "../../src/store/index.js";

export type FixtureRow = Record<string, unknown>;

export interface FixtureTable {
  table: string;
  /** ORDER BY that returns the rows in the order listed here (read-back comparisons). */
  orderBy: string;
  /** Each row lists the columns it sets; an omitted column takes its DEFAULT. */
  rows: FixtureRow[];
}

/** The migration runner's own bookkeeping table (src/store/migrate.ts): not application data. */
export const MIGRATIONS_TABLE = "flotilla_migrations";

/** A deterministic UUID (version 7 and variant bits set) whose order follows n. */
export function fixtureId(n: number): string {
  return `00000000-0000-7000-8000-${n.toString(16).padStart(12, "0")}`;
}

/** Exactly n characters (code points, what PostgreSQL's length() counts) by repeating s. */
export function chars(s: string, n: number): string {
  const points = [...s];
  return Array.from({ length: n }, (_, i) => points[i % points.length]).join("");
}

/** Deterministic bytes that include 0x00 and 0xff, the values text codecs tend to mangle. */
function bytes(length: number, seed: number): Buffer {
  return Buffer.from(
    Array.from({ length }, (_, i) => (i === 0 ? 0 : i === 1 ? 255 : i * seed) & 255),
  );
}

export const UNICODE = {
  emoji: "🚀 déploiement 🐘 👩‍💻",
  cjk: "東京のサービス 数据库 서비스",
  rtl: "مرحبا بالعالم שלום עולם",
  // Decomposed on purpose (e + U+0301, n + U+0303, zalgo): must come back unnormalized.
  combining: "e\u0301 n\u0303 Z\u0335\u0321a\u0334l\u0336g\u0337o\u0338",
} as const;

/** All the unicode samples in one text (the 256-character config key's value holds it whole). */
export const MIXED = `${UNICODE.emoji} ${UNICODE.cjk} ${UNICODE.rtl} ${UNICODE.combining} `;

/** Slugs match ^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?$: at most 40 characters. */
const maxSlug = (prefix: string) => `${chars(`${prefix}-0123456789`, 39)}z`;

export const MAX = {
  name: chars(MIXED, 100),
  slug: maxSlug("org"),
  // 64-character local part, domain labels of at most 63 characters: 254 characters in all.
  email: `${"l".repeat(64)}@${["d".repeat(63), "o".repeat(63), "m".repeat(56), "test"].join(".")}`,
  configKey: `K${"_A1".repeat(85)}`,
} as const;

/** Columns holding the longest value their CHECK constraint allows; fixtures.test.ts asserts them. */
export const MAX_LENGTHS: { table: string; column: string; length: number }[] = [
  { table: "organizations", column: "slug", length: 40 },
  { table: "organizations", column: "name", length: 100 },
  { table: "users", column: "email", length: 254 },
  { table: "users", column: "display_name", length: 100 },
  { table: "api_tokens", column: "name", length: 100 },
  { table: "projects", column: "slug", length: 40 },
  { table: "projects", column: "name", length: 100 },
  { table: "environments", column: "slug", length: 40 },
  { table: "environments", column: "name", length: 100 },
  { table: "services", column: "slug", length: 40 },
  { table: "services", column: "name", length: 100 },
  { table: "config_entries", column: "key", length: 256 },
  { table: "join_tokens", column: "server_name", length: 40 },
  { table: "servers", column: "name", length: 40 },
  { table: "data_planes", column: "name", length: 40 },
  { table: "data_planes", column: "region", length: 100 },
];

const NESTED = {
  image: "ghcr.io/acme/api:1.2.3",
  ports: [{ container: 8080, protocol: "http", public: true }],
  env: { GREETING: `${UNICODE.cjk} ${UNICODE.emoji}`, EMPTY: "" },
  resources: { cpu: 0.5, memory_mb: 512, limits: { a: { b: { c: [1, [2, [3, { d: null }]]] } } } },
  flags: [true, false, null],
  "ключ с пробелом": UNICODE.rtl,
  escapes: 'quote " backslash \\ newline \n tab \t',
  empty_object: {},
  empty_array: [],
  numbers: { max_safe: 9007199254740991, negative: -42, float: 3.25, tiny: 1e-7 },
} as const;

const org = { a: fixtureId(0x101), b: fixtureId(0x102) };
const user = { max: fixtureId(0x201), plain: fixtureId(0x202) };
const project = { a: fixtureId(0x401), b: fixtureId(0x402) };
const env = { prod: fixtureId(0x501), max: fixtureId(0x502) };
const service = { app: fixtureId(0x601), db: fixtureId(0x602) };
const deployment = { first: fixtureId(0x701), rollback: fixtureId(0x702), db: fixtureId(0x703) };
const server = { online: fixtureId(0x901), offline: fixtureId(0x902) };
const dataPlane = { default: fixtureId(0xa01), eu: fixtureId(0xa02) };
const T0 = new Date("2024-02-29T12:34:56.789Z");
const at = (minutes: number) => new Date(T0.getTime() + minutes * 60_000);
const TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/** Every table the migrations create, in foreign-key order, with its rows. */
export const FIXTURES: FixtureTable[] = [
  {
    table: "organizations",
    orderBy: "id",
    rows: [
      { id: org.a, slug: MAX.slug, name: MAX.name, created_at: T0 },
      { id: org.b, slug: "b", name: "B" },
    ],
  },
  {
    table: "users",
    orderBy: "id",
    rows: [
      {
        id: user.max,
        email: MAX.email,
        display_name: chars(`${UNICODE.combining} ${UNICODE.emoji} `, 100),
        password_hash: "$argon2id$v=19$m=65536,t=3,p=4$c2FsdA$aGFzaA",
        sessions_valid_after: at(1),
        created_at: T0,
        disabled_at: at(2),
      },
      // display_name and sessions_valid_after ('-infinity') left to their defaults.
      {
        id: user.plain,
        email: "Mixed.Case@Example.COM",
        password_hash: "scrypt$x",
        disabled_at: null,
      },
    ],
  },
  {
    table: "memberships",
    orderBy: "organization_id, user_id",
    rows: [
      { organization_id: org.a, user_id: user.max, role: "owner", created_at: T0 },
      { organization_id: org.a, user_id: user.plain, role: "developer" },
      { organization_id: org.b, user_id: user.plain, role: "admin" },
    ],
  },
  {
    table: "api_tokens",
    orderBy: "id",
    rows: [
      {
        id: fixtureId(0x301),
        organization_id: org.a,
        user_id: user.max,
        name: chars(`${UNICODE.rtl} `, 100),
        token_hash: bytes(32, 37),
        prefix: "flt_0a1b",
        created_at: T0,
        last_used_at: at(3),
        expires_at: new Date("2099-12-31T23:59:59.999Z"),
        revoked_at: at(4),
      },
      {
        id: fixtureId(0x302),
        organization_id: org.a,
        user_id: user.plain,
        name: "ci",
        token_hash: bytes(32, 91),
        prefix: "flt_9z8y",
        last_used_at: null,
        expires_at: null,
        revoked_at: null,
      },
    ],
  },
  {
    table: "login_attempts",
    orderBy: "id",
    rows: [
      { email_key: MAX.email, remote_addr: "2001:db8::1", succeeded: false, attempted_at: T0 },
      { email_key: "mixed.case@example.com", remote_addr: "203.0.113.7", succeeded: true },
    ],
  },
  {
    table: "setup_state",
    orderBy: "singleton",
    rows: [{ singleton: true, token_hash: bytes(32, 13), created_at: T0, completed_at: at(5) }],
  },
  {
    table: "audit_log",
    orderBy: "id",
    rows: [
      // Every optional column NULL and details left to its default.
      {
        id: fixtureId(0x801),
        organization_id: null,
        actor_type: "anonymous",
        actor_id: null,
        action: "identity.login.failed",
        target_type: null,
        target_id: null,
        correlation_id: "corr-1",
        traceparent: TRACEPARENT,
        request_id: null,
      },
      {
        id: fixtureId(0x802),
        organization_id: org.a,
        actor_type: "user",
        actor_id: user.max,
        action: "services.service.create",
        target_type: "service",
        target_id: service.app,
        correlation_id: "corr-2",
        traceparent: TRACEPARENT,
        request_id: "req-2",
        details: { before: null, after: NESTED, note: UNICODE.combining },
        created_at: T0,
      },
      {
        id: fixtureId(0x803),
        organization_id: org.b,
        actor_type: "token",
        actor_id: fixtureId(0x302),
        action: "config.entry.set",
        correlation_id: "corr-3",
        traceparent: TRACEPARENT,
        details: { key: "DATABASE_PASSWORD", kind: "secret" },
      },
      {
        id: fixtureId(0x804),
        actor_type: "system",
        action: "identity.setup.complete",
        correlation_id: "corr-4",
        traceparent: TRACEPARENT,
      },
    ],
  },
  {
    table: "projects",
    orderBy: "id",
    rows: [
      {
        id: project.a,
        organization_id: org.a,
        slug: maxSlug("project"),
        name: MAX.name,
        created_at: T0,
        updated_at: at(1),
      },
      { id: project.b, organization_id: org.b, slug: "p", name: UNICODE.emoji },
    ],
  },
  {
    table: "environments",
    orderBy: "id",
    rows: [
      {
        id: env.prod,
        organization_id: org.a,
        project_id: project.a,
        slug: "production",
        name: "Production",
      },
      {
        id: env.max,
        organization_id: org.a,
        project_id: project.a,
        slug: maxSlug("env"),
        name: chars(`${UNICODE.cjk} `, 100),
        created_at: T0,
        updated_at: T0,
      },
    ],
  },
  {
    table: "services",
    orderBy: "id",
    rows: [
      // Points at a deployment inserted later in the same transaction: the FK is deferred.
      {
        id: service.app,
        organization_id: org.a,
        project_id: project.a,
        environment_id: env.prod,
        slug: "api",
        name: UNICODE.rtl,
        kind: "app",
        template_id: null,
        visibility: "PUBLIC",
        server_id: null,
        spec: NESTED,
        desired_deployment_id: deployment.rollback,
        observed_reason: null,
        observed_deployment_id: null,
        observed_endpoint: null,
        observed_at: null,
      },
      {
        id: service.db,
        organization_id: org.a,
        project_id: project.a,
        environment_id: env.prod,
        slug: maxSlug("database"),
        name: chars(`${UNICODE.combining} `, 100),
        kind: "database",
        template_id: "postgres-16",
        visibility: "PRIVATE",
        server_id: server.online,
        spec: { engine: { name: "postgres", version: 16 }, storage: { size_gb: 10 } },
        desired_deployment_id: null,
        observed_status: "running",
        observed_reason: `healthy ${UNICODE.emoji}`,
        observed_deployment_id: deployment.db,
        observed_endpoint: "db-0a1b.internal:5432",
        observed_at: at(6),
        created_at: T0,
        updated_at: at(6),
      },
    ],
  },
  {
    table: "deployments",
    orderBy: "id",
    rows: [
      {
        id: deployment.first,
        organization_id: org.a,
        service_id: service.app,
        number: 1,
        spec: NESTED,
        config_version: "env:3/service:1",
        reason: "create",
        source_deployment_id: null,
        created_by: `user:${user.max}`,
        created_at: T0,
        status: "superseded",
        status_reason: null,
        endpoint: null,
        observed_at: null,
      },
      {
        id: deployment.rollback,
        organization_id: org.a,
        service_id: service.app,
        number: 2,
        spec: NESTED,
        config_version: "env:3/service:1",
        reason: "rollback",
        source_deployment_id: deployment.first,
        created_by: `token:${fixtureId(0x302)}`,
        status: "running",
        status_reason: `rolled back ${UNICODE.cjk}`,
        endpoint: "https://api.example.test",
        observed_at: at(7),
      },
      {
        id: deployment.db,
        organization_id: org.a,
        service_id: service.db,
        number: 1,
        spec: { engine: { name: "postgres", version: 16 } },
        config_version: "service:1",
        reason: "create",
        created_by: "system",
      },
    ],
  },
  {
    table: "config_scopes",
    orderBy: "scope_type, scope_id",
    rows: [
      { scope_type: "environment", scope_id: env.prod, organization_id: org.a, revision: 3 },
      { scope_type: "service", scope_id: service.app, organization_id: org.a, revision: 1 },
    ],
  },
  {
    table: "config_entries",
    orderBy: "id",
    rows: [
      {
        id: fixtureId(0xa01),
        organization_id: org.a,
        scope_type: "environment",
        scope_id: env.prod,
        key: MAX.configKey,
        kind: "variable",
        value: MIXED,
        sealed: null,
        key_id: null,
        updated_at: T0,
      },
      // A secret keeps only the sealed box (nonce, ciphertext, tag) and the master key's id.
      {
        id: fixtureId(0xa02),
        organization_id: org.a,
        scope_type: "service",
        scope_id: service.app,
        key: "DATABASE_PASSWORD",
        kind: "secret",
        value: null,
        sealed: bytes(12 + 24 + 16, 53),
        key_id: "mk-2024-01",
      },
      {
        id: fixtureId(0xa03),
        organization_id: org.a,
        scope_type: "service",
        scope_id: service.app,
        key: "EMPTY",
        kind: "variable",
        value: "",
      },
    ],
  },
  {
    table: "outbox_events",
    orderBy: "id",
    rows: [
      {
        id: fixtureId(0xb01),
        organization_id: org.a,
        type: "service.created",
        subject_id: service.app,
        payload: { service: NESTED, name: UNICODE.rtl },
        correlation_id: "corr-2",
        traceparent: TRACEPARENT,
        occurred_at: T0,
        published_at: null,
      },
      {
        id: fixtureId(0xb02),
        organization_id: org.b,
        type: "organization.created",
        subject_id: org.b,
        correlation_id: "corr-5",
        traceparent: TRACEPARENT,
        published_at: at(8),
      },
    ],
  },
  // 0007_servers
  {
    table: "data_planes",
    orderBy: "id",
    rows: [
      { id: dataPlane.default, organization_id: org.a, name: "default", is_default: true },
      {
        id: dataPlane.eu,
        organization_id: org.a,
        name: maxSlug("plane"),
        region: MAX.name,
        created_at: at(7),
        updated_at: at(8),
      },
    ],
  },
  // 0010_data_plane_private_links: the request row first, so the links' trigger bumps it in place.
  {
    table: "data_plane_converge_requests",
    orderBy: "data_plane_id",
    rows: [
      {
        data_plane_id: dataPlane.eu,
        converged: 1,
        converged_at: at(8),
        claimed_by: "hub-0a1b/7e1c",
        claimed_until: at(9),
        attempts: 2,
        // next_attempt_at is left out: the links' trigger clears it (a change is tried at once).
        last_error: `provisioner exited with code 1; stderr ends with: ${UNICODE.rtl}`,
      },
    ],
  },
  {
    table: "data_plane_private_links",
    orderBy: "id",
    rows: [
      // Pending, every observed column NULL.
      {
        id: fixtureId(0xa11),
        data_plane_id: dataPlane.eu,
        provider: "aws",
        config: {
          region: "us-east-1",
          az_ids: ["use1-az1", "use1-az4"],
          service_name: "com.amazonaws.vpce.us-east-1.vpce-svc-0123456789abcdef0",
        },
        created_at: T0,
      },
      // Provisioned at a later generation, nested details, unicode in the error-free details.
      {
        id: fixtureId(0xa12),
        data_plane_id: dataPlane.eu,
        provider: "gcp",
        config: {
          service_attachment: "projects/p/regions/us-central1/serviceAttachments/db",
          region: "us-central1",
          dns_zone_name: "db.internal.",
          dns_record_names: ["a.db.internal.", "b.db.internal."],
          all_ports: true,
        },
        generation: 3,
        status: "provisioned",
        details: { endpoint: { ip: "10.0.0.7", names: [UNICODE.cjk] }, note: UNICODE.emoji },
        error: null,
        observed_at: at(9),
        created_at: at(1),
      },
      {
        id: fixtureId(0xa13),
        data_plane_id: dataPlane.eu,
        provider: "azure",
        config: { service_name: "svc.alias.azure.privatelinkservice", location: "eastus" },
        generation: 2,
        status: "failed",
        details: null,
        error: `rejected: ${UNICODE.combining}`,
        observed_at: at(10),
        created_at: at(2),
      },
    ],
  },
  {
    table: "join_tokens",
    orderBy: "id",
    rows: [
      {
        id: fixtureId(0xc01),
        organization_id: org.a,
        token_hash: bytes(32, 71),
        server_name: maxSlug("server"),
        created_by: `user:${user.max}`,
        created_at: T0,
        expires_at: at(60),
        used_at: at(9),
        server_id: server.online,
      },
      {
        id: fixtureId(0xc02),
        organization_id: org.b,
        token_hash: bytes(32, 19),
        server_name: "s",
        created_by: "system",
        expires_at: new Date("2099-12-31T23:59:59.999Z"),
        used_at: null,
        server_id: null,
      },
    ],
  },
  {
    table: "servers",
    orderBy: "id",
    rows: [
      {
        id: server.online,
        organization_id: org.a,
        name: maxSlug("server"),
        secret_sealed: bytes(12 + 32 + 16, 29),
        secret_key_id: "mk-2024-01",
        data_plane_id: dataPlane.eu,
        status: "online",
        connected_hub_id: "hub-0a1b",
        session_id: "sess-1",
        connected_at: at(9),
        last_heartbeat: at(10),
        disconnected_at: null,
        agent_version: "0.1.0",
        // A top-level JSON array.
        drivers: [
          { name: "docker", version: "27.1" },
          { name: "postgres", versions: [15, 16] },
        ],
        cores: 64,
        memory_bytes: 256 * 2 ** 30,
        disk_free_bytes: 2 ** 52,
        created_at: T0,
      },
      // Never connected: every optional NULL, drivers left to its default.
      {
        id: server.offline,
        organization_id: org.b,
        name: "s",
        secret_sealed: bytes(60, 3),
        secret_key_id: "mk-2024-01",
        connected_hub_id: null,
        session_id: null,
        connected_at: null,
        last_heartbeat: null,
        agent_version: null,
        cores: null,
        memory_bytes: null,
        disk_free_bytes: null,
      },
    ],
  },
  {
    table: "dispatches",
    orderBy: "id",
    rows: [
      {
        id: fixtureId(0xd01),
        organization_id: org.a,
        server_id: server.online,
        service_id: service.app,
        deployment_id: deployment.rollback,
        op: "deploy",
        args: { spec: NESTED, env_ref: { scope: "environment", revision: 3 } },
        state: "in_progress",
        claimed_by: "hub-0a1b",
        attempts: 2,
        result: null,
        error: null,
        deadline_at: at(11),
        correlation_id: "corr-6",
        traceparent: TRACEPARENT,
        created_at: T0,
        updated_at: at(10),
      },
      {
        id: fixtureId(0xd02),
        organization_id: org.a,
        server_id: server.online,
        service_id: null,
        deployment_id: null,
        op: "job",
        state: "failed",
        result: { exit_code: 1, output: [UNICODE.rtl, UNICODE.combining] },
        error: `failed ${UNICODE.emoji}`,
        correlation_id: "corr-7",
        traceparent: TRACEPARENT,
      },
    ],
  },
  // 0016_event_consumers
  {
    table: "event_processed",
    orderBy: "consumer, event_id",
    rows: [
      { consumer: "audit", event_id: fixtureId(0xb01), processed_at: at(2) },
      { consumer: chars("webhooks-", 64), event_id: fixtureId(0xb02) },
    ],
  },
  {
    table: "event_quarantine",
    orderBy: "id",
    rows: [
      {
        id: fixtureId(0xe01),
        organization_id: org.a,
        consumer: "audit",
        stream: "FLOTILLA_EVENTS",
        subject: `flotilla.${org.a}.service.created.${service.app}`,
        stream_seq: 2 ** 40,
        event_id: fixtureId(0xb01),
        event_type: "service.created",
        deliveries: 5,
        reason: chars(`failed 5 times: ${UNICODE.emoji}`, 2000),
        payload_ref: `stream:FLOTILLA_EVENTS/1099511627776 outbox_events:${fixtureId(0xb01)}`,
        state: "replayed",
        replayed_at: at(12),
        created_at: at(11),
      },
      // Undecodable, without a tenant: every optional NULL.
      {
        id: fixtureId(0xe02),
        organization_id: null,
        consumer: "webhooks",
        stream: "FLOTILLA_EVENTS",
        subject: "flotilla.x.y.z.w",
        stream_seq: 1,
        event_id: null,
        event_type: null,
        deliveries: 1,
        reason: "undecodable: Unexpected token",
        payload_ref: "stream:FLOTILLA_EVENTS/1",
        replayed_at: null,
      },
    ],
  },
  // 0017_webhooks
  {
    table: "webhook_endpoints",
    orderBy: "id",
    rows: [
      {
        id: fixtureId(0xf01),
        organization_id: org.a,
        url: `https://hooks.example.com/${chars("p", 1900)}`,
        event_types: ["deployment.*", "database.created"],
        description: chars(MIXED, 200),
        secret_sealed: bytes(12 + 38 + 16, 41),
        secret_key_id: "mk-2024-01",
        created_by: `user:${user.max}`,
        created_at: T0,
      },
      {
        id: fixtureId(0xf02),
        organization_id: org.b,
        url: "http://127.0.0.1:9/h",
        event_types: ["database.*"],
        secret_sealed: bytes(66, 5),
        secret_key_id: "mk-2024-01",
        created_by: "token:t",
      },
    ],
  },
  {
    table: "database_backups",
    orderBy: "id",
    rows: [
      {
        id: fixtureId(0xb01),
        organization_id: org.a,
        service_id: service.db,
        server_id: server.online,
        dispatch_id: fixtureId(0xd02),
        origin: "schedule",
        state: "done",
        file: `${fixtureId(0xb01)}.dump`,
        size_bytes: 9007199254740991,
        sha256: "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        error: null,
        duration_ms: 1234,
        created_by: "schedule",
        created_at: T0,
        finished_at: at(1),
      },
      {
        id: fixtureId(0xb02),
        organization_id: org.a,
        service_id: service.db,
        server_id: server.online,
        dispatch_id: fixtureId(0xd01),
        origin: "manual",
        state: "failed",
        error: `${UNICODE.rtl} is not running ${UNICODE.emoji}`,
        created_by: "user:x",
      },
    ],
  },
  {
    table: "webhook_deliveries",
    orderBy: "id",
    rows: [
      {
        id: fixtureId(0xf11),
        organization_id: org.a,
        endpoint_id: fixtureId(0xf01),
        event_id: fixtureId(0xb01),
        event_type: "deployment.created",
        body: { id: fixtureId(0xb01), data: NESTED },
        correlation_id: "corr-2",
        traceparent: TRACEPARENT,
        status: "succeeded",
        attempts: 4,
        next_attempt_at: at(3),
        lease_until: null,
        last_status_code: 204,
        last_error: null,
        delivered_at: at(4),
        created_at: at(2),
      },
      {
        id: fixtureId(0xf12),
        organization_id: org.b,
        endpoint_id: fixtureId(0xf02),
        event_id: fixtureId(0xb02),
        event_type: "database.created",
        body: { text: UNICODE.cjk },
        correlation_id: "corr-5",
        traceparent: TRACEPARENT,
        status: "failed",
        attempts: 10,
        lease_until: at(5),
        last_status_code: null,
        last_error: chars("connect ECONNREFUSED ", 500),
      },
    ],
  },
  {
    table: "database_backup_schedules",
    orderBy: "service_id",
    rows: [
      {
        service_id: service.db,
        organization_id: org.a,
        cron: "0 3 * * 1-5",
        retention: 1000,
        next_run_at: at(60),
        last_run_at: null,
        created_by: "user:x",
        updated_at: T0,
      },
    ],
  },
  // 0014_apis_gateways
  {
    table: "apis",
    orderBy: "id",
    rows: [
      {
        id: fixtureId(0xe01),
        organization_id: org.a,
        name: maxSlug("api"),
        kind: "RestApi",
        definition: {
          contextPath: "/orders",
          upstream: { url: "http://127.0.0.1:9" },
          note: UNICODE.cjk,
        },
        created_at: T0,
      },
      {
        id: fixtureId(0xe02),
        organization_id: org.a,
        name: "llm",
        kind: "LlmProvider",
        definition: { contextPath: "/llm", upstreamUrl: "http://127.0.0.1:9/v1", models: ["m"] },
        credential_sealed: bytes(44, 13),
        credential_key_id: "k1",
      },
      {
        id: fixtureId(0xe03),
        organization_id: org.a,
        name: "proxy",
        kind: "LlmProxy",
        definition: { contextPath: "/ai", rateLimit: { requestsPerMinute: 60 } },
        provider_api_id: fixtureId(0xe02),
      },
    ],
  },
  {
    table: "api_consumer_keys",
    orderBy: "id",
    rows: [
      {
        id: fixtureId(0xe11),
        organization_id: org.a,
        api_id: fixtureId(0xe03),
        name: maxSlug("key"),
        key_hash: bytes(32, 29),
      },
    ],
  },
  {
    table: "gateways",
    orderBy: "id",
    rows: [
      {
        id: fixtureId(0xe21),
        organization_id: org.a,
        data_plane_id: dataPlane.eu,
        name: maxSlug("gateway"),
        token_hash: bytes(32, 31),
        last_seen_at: null,
      },
    ],
  },
  {
    table: "api_deployments",
    orderBy: "deployment_id",
    rows: [
      {
        deployment_id: fixtureId(0xe31),
        organization_id: org.a,
        api_id: fixtureId(0xe01),
        gateway_id: fixtureId(0xe21),
        state: "DEPLOYED",
        deployed_at: T0,
        content: { name: "x", kind: "RestApi", definition: NESTED, provider_api_id: null },
        created_by: `user:${user.max}`,
      },
      {
        deployment_id: fixtureId(0xe32),
        organization_id: org.a,
        api_id: fixtureId(0xe03),
        gateway_id: fixtureId(0xe21),
        state: "UNDEPLOYED",
        deployed_at: at(3),
        content: {
          name: "proxy",
          kind: "LlmProxy",
          definition: {},
          provider_api_id: fixtureId(0xe02),
        },
        created_by: "token:t",
      },
    ],
  },
  {
    table: "service_domains",
    orderBy: "id",
    rows: [
      {
        id: fixtureId(0xe51),
        organization_id: org.a,
        service_id: service.app,
        hostname: `${"a".repeat(63)}.${"b".repeat(63)}.${"c".repeat(63)}.${"d".repeat(57)}.com`,
        created_by: `user:${user.max}`,
      },
    ],
  },
  {
    table: "api_deployment_status",
    orderBy: "gateway_id, api_id",
    rows: [
      {
        gateway_id: fixtureId(0xe21),
        api_id: fixtureId(0xe01),
        organization_id: org.a,
        deployment_id: fixtureId(0xe31),
        observed_deployed_at: T0,
        status: "failed",
        reason: `bad definition ${UNICODE.rtl}`,
      },
    ],
  },
  // 0015_service_routes
  {
    table: "service_routes",
    orderBy: "route_id",
    rows: [
      {
        route_id: fixtureId(0xe41),
        organization_id: org.a,
        service_id: service.app,
        gateway_id: fixtureId(0xe21),
        hostnames: ["app-production.localhost", "www.example.com"],
        endpoint: "127.0.0.1:40123",
        state: "DEPLOYED",
        deployed_at: T0,
      },
    ],
  },
];

/** The tables the generator fills, in foreign-key order (a copy must insert them in this order). */
export const FIXTURE_TABLES: string[] = FIXTURES.map((f) => f.table);

/** Per-table row counts the generator inserted. */
export type FixtureReport = Record<string, number>;

/**
 * jsonb values go over the wire as JSON text: the pg driver would turn a top-level JS array into a
 * PostgreSQL array literal, so objects and arrays are serialized here, identically for both engines.
 */
function param(value: unknown): unknown {
  if (value === null || value instanceof Date || value instanceof Uint8Array) return value;
  return typeof value === "object" ? JSON.stringify(value) : value;
}

async function insertRows(tx: Queryable, { table, rows }: FixtureTable): Promise<number> {
  let inserted = 0;
  for (const row of rows) {
    const columns = Object.keys(row);
    const placeholders = columns.map((_, i) => `$${i + 1}`);
    const result = await tx.query(
      `INSERT INTO ${table} (${columns.join(", ")}) VALUES (${placeholders.join(", ")})`,
      columns.map((c) => param(row[c])),
    );
    inserted += result.rowCount;
  }
  return inserted;
}

/**
 * Inserts FIXTURES into an empty, migrated database in one transaction (the deferred
 * services -> deployments foreign key is checked at its commit). Returns rows inserted per table.
 */
export async function seedFixtures(db: Db): Promise<FixtureReport> {
  return db.tx(async (tx) => {
    const report: FixtureReport = {};
    for (const fixture of FIXTURES) report[fixture.table] = await insertRows(tx, fixture);
    return report;
  });
}

/** The application's tables as the database sees them: public base tables, bookkeeping excluded. */
export async function listTables(q: Queryable): Promise<string[]> {
  const { rows } = await q.query<{ table_name: string }>(
    `SELECT table_name FROM information_schema.tables
     WHERE table_schema = 'public' AND table_type = 'BASE TABLE' AND table_name <> $1
     ORDER BY table_name`,
    [MIGRATIONS_TABLE],
  );
  return rows.map((r) => r.table_name);
}

/** Row counts per table, e.g. to compare a source and a copy. */
export async function countRows(q: Queryable, tables: string[]): Promise<Record<string, number>> {
  const counts: Record<string, number> = {};
  for (const table of tables) {
    const { rows } = await q.query<{ n: number }>(`SELECT count(*)::int AS n FROM ${table}`);
    counts[table] = rows[0]!.n;
  }
  return counts;
}

/** Tables the database has that hold no row: after seedFixtures, a table FIXTURES forgot. */
export async function emptyTables(q: Queryable): Promise<string[]> {
  const counts = await countRows(q, await listTables(q));
  return Object.keys(counts).filter((t) => counts[t] === 0);
}

/** A value in a form both engines' results compare equal in: bytes as hex, instants as ISO text. */
export function comparable(value: unknown): unknown {
  if (value instanceof Uint8Array) return `\\x${Buffer.from(value).toString("hex")}`;
  if (value instanceof Date) return value.toISOString();
  return value;
}

/** Reads back a fixture table's rows, only the columns each fixture row sets, comparable(). */
export async function readBack(q: Queryable, fixture: FixtureTable): Promise<FixtureRow[]> {
  const columns = [...new Set(fixture.rows.flatMap((r) => Object.keys(r)))];
  const { rows } = await q.query<FixtureRow>(
    `SELECT ${columns.join(", ")} FROM ${fixture.table} ORDER BY ${fixture.orderBy}`,
  );
  return rows.map((row, i) => {
    const expected = fixture.rows[i] ?? {};
    return Object.fromEntries(Object.keys(expected).map((c) => [c, comparable(row[c])]));
  });
}

/** FIXTURES' rows in the shape readBack() returns. */
export function expectedRows(fixture: FixtureTable): FixtureRow[] {
  return fixture.rows.map((row) =>
    Object.fromEntries(Object.entries(row).map(([c, v]) => [c, comparable(v)])),
  );
}
