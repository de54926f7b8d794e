// The template catalogue (code owned by the control plane): what a managed database runs, and its credentials.
import { randomBytes } from "node:crypto";
import { FlotillaError } from "../../shared/index.js";
import type { Driver, ServiceSpec } from "./spec.js";

export interface DatabaseTemplate {
  id: string;
  /** What it is, for people. */
  title: string;
  engine: "postgres";
  /** Docker driver: the image and the port the database listens on inside it. */
  image: string;
  port: number;
  /** Where the data volume is mounted (docker); the exec bootstrap keeps its data in it too. */
  dataMountPath: string;
}

export const TEMPLATES: Record<string, DatabaseTemplate> = {
  postgres16: {
    id: "postgres16",
    title: "PostgreSQL 16 (exec: the server's own PostgreSQL binaries)",
    engine: "postgres",
    image: "postgres:16-alpine",
    port: 5432,
    dataMountPath: "/var/lib/postgresql/data",
  },
};

/** The volume that holds a database's data: it outlives deployments, restarts and agent restarts. */
export const DATA_VOLUME = "data";

export function templateOf(id: string, field = "template_id"): DatabaseTemplate {
  const t = Object.hasOwn(TEMPLATES, id) ? TEMPLATES[id] : undefined;
  if (!t)
    throw new FlotillaError(
      "validation.failed",
      `${field}: unknown template "${id.slice(0, 60)}"; the catalogue has: ${Object.keys(TEMPLATES).join(", ")}`,
      { field },
    );
  return t;
}

/**
 * The spec a template fixes. `template` tells the exec driver to run its bootstrap (initdb on
 * first start, then the server on loopback at the port it allocates); Docker runs the image,
 * whose entrypoint does the same from the POSTGRES_* variables.
 */
export function templateSpec(t: DatabaseTemplate, driver: Driver): ServiceSpec {
  return {
    driver,
    template: t.id,
    ...(driver === "exec"
      ? { exec: { command: "postgres", args: [], workingDirectory: "", port: t.port } }
      : { docker: { image: t.image, command: [], port: t.port } }),
    healthCheck: { type: "tcp", path: "" },
    restartPolicy: "always",
    volumes: [{ name: DATA_VOLUME, mountPath: t.dataMountPath }],
  };
}

export interface DatabaseCredentials {
  user: string;
  database: string;
  password: string;
}

/**
 * User and database are named after the service (dashes become underscores; PostgreSQL folds
 * and quotes nothing then); the password is 24 random bytes from the CSPRNG, base64url (192
 * bits, no characters a URI must escape).
 */
export function generateCredentials(slug: string): DatabaseCredentials {
  const name = `${/^[a-z]/.test(slug) ? "" : "db_"}${slug.replace(/-/g, "_")}`.slice(0, 63);
  return { user: name, database: name, password: randomBytes(24).toString("base64url") };
}

/** Config keys the credentials live under: variables for user and database, a secret for the password. */
export const CREDENTIAL_KEYS = {
  user: "POSTGRES_USER",
  database: "POSTGRES_DB",
  password: "POSTGRES_PASSWORD",
} as const;
