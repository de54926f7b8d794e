// Projects and environments: create, list, get, rename, delete, with a production environment from the start.
import {
  type Caller,
  checkId,
  checkName,
  checkSlug,
  FlotillaError,
  isUniqueViolation,
  notFound,
  slugFrom,
  uuidv7,
} from "../../shared/index.js";
import type { Db, Queryable } from "../../store/index.js";
import { recordAudit } from "../audit/index.js";
import { appendEvent } from "../outbox/index.js";
import type { DependentsPort, Scope } from "./ports.js";

export interface Project {
  id: string;
  slug: string;
  name: string;
  createdAt: Date;
  updatedAt: Date;
}

export interface Environment {
  id: string;
  projectId: string;
  slug: string;
  name: string;
  createdAt: Date;
}

interface ProjectRow {
  id: string;
  slug: string;
  name: string;
  created_at: Date;
  updated_at: Date;
}

interface EnvironmentRow {
  id: string;
  project_id: string;
  slug: string;
  name: string;
  created_at: Date;
}

const toProject = (r: ProjectRow): Project => ({
  id: r.id,
  slug: r.slug,
  name: r.name,
  createdAt: r.created_at,
  updatedAt: r.updated_at,
});

const toEnvironment = (r: EnvironmentRow): Environment => ({
  id: r.id,
  projectId: r.project_id,
  slug: r.slug,
  name: r.name,
  createdAt: r.created_at,
});

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
const PROJECT_COLUMNS = "id, slug, name, created_at, updated_at";
const ENVIRONMENT_COLUMNS = "id, project_id, slug, name, created_at";

/** No dependents: a deployment without services (tests of this module alone). */
export const NO_DEPENDENTS: DependentsPort = {
  running: async () => [],
  removeEnvironment: async () => {},
};

export class ProjectsService {
  constructor(
    private readonly db: Db,
    // Wired after construction: services depend on projects, and projects ask services back.
    private dependents: DependentsPort = NO_DEPENDENTS,
  ) {}

  setDependents(dependents: DependentsPort): void {
    this.dependents = dependents;
  }

  async createProject(
    c: Caller,
    nameText: string,
    slugText: string,
  ): Promise<{ project: Project; production: Environment }> {
    const name = checkName("name", nameText);
    const slug = slugText ? checkSlug("slug", slugText) : slugFrom(name, "project");
    return this.db.tx(async (tx) => {
      let project: Project;
      try {
        const { rows } = await tx.query<ProjectRow>(
          `INSERT INTO projects (id, organization_id, slug, name) VALUES ($1, $2, $3, $4)
           RETURNING ${PROJECT_COLUMNS}`,
          [uuidv7(), c.organizationId, slug, name],
        );
        project = toProject(rows[0]!);
      } catch (err) {
        if (isUniqueViolation(err)) {
          throw new FlotillaError(
            "resource.already_exists",
            `a project with slug "${slug}" already exists`,
            {
              field: "slug",
            },
          );
        }
        throw err;
      }
      const production = await this.insertEnvironment(
        tx,
        c,
        project.id,
        "Production",
        "production",
      );
      await recordAudit(tx, {
        organizationId: c.organizationId,
        actor: c.actor,
        action: "project.create",
        target: { type: "project", id: project.id },
        details: { slug, name },
      });
      await appendEvent(tx, {
        organizationId: c.organizationId,
        type: "project.created",
        subjectId: project.id,
        payload: { slug, name, production_environment_id: production.id },
      });
      // After project.created, so a consumer reading events in id order meets the project first.
      await this.announceEnvironment(tx, c, production);
      return { project, production };
    });
  }

  async listProjects(c: Caller): Promise<Project[]> {
    const { rows } = await this.db.query<ProjectRow>(
      `SELECT ${PROJECT_COLUMNS} FROM projects WHERE organization_id = $1 ORDER BY slug`,
      [c.organizationId],
    );
    return rows.map(toProject);
  }

  /** By id or slug; another organization's project is not found. */
  async getProject(c: Caller, ref: string, q: Queryable = this.db): Promise<Project> {
    if (!ref)
      throw new FlotillaError("validation.failed", "project: is required", { field: "project" });
    const byId = UUID.test(ref);
    const { rows } = await q.query<ProjectRow>(
      `SELECT ${PROJECT_COLUMNS} FROM projects WHERE organization_id = $1 AND ${byId ? "id = $2::uuid" : "slug = $2"}`,
      [c.organizationId, byId ? ref.toLowerCase() : ref],
    );
    if (!rows[0]) throw notFound(`project ${ref}`);
    return toProject(rows[0]);
  }

  async getProjectWithEnvironments(c: Caller, ref: string) {
    const project = await this.getProject(c, ref);
    return { project, environments: await this.listEnvironments(c, project.id) };
  }

  async renameProject(c: Caller, ref: string, nameText: string): Promise<Project> {
    const name = checkName("name", nameText);
    return this.db.tx(async (tx) => {
      const project = await this.getProject(c, ref, tx);
      const { rows } = await tx.query<ProjectRow>(
        `UPDATE projects SET name = $3, updated_at = now() WHERE id = $1 AND organization_id = $2
         RETURNING ${PROJECT_COLUMNS}`,
        [project.id, c.organizationId, name],
      );
      await recordAudit(tx, {
        organizationId: c.organizationId,
        actor: c.actor,
        action: "project.rename",
        target: { type: "project", id: project.id },
        details: { from: project.name, to: name },
      });
      await appendEvent(tx, {
        organizationId: c.organizationId,
        type: "project.renamed",
        subjectId: project.id,
        payload: { name },
      });
      return toProject(rows[0]!);
    });
  }

  async deleteProject(c: Caller, ref: string, force: boolean): Promise<void> {
    await this.db.tx(async (tx) => {
      const project = await this.getProject(c, ref, tx);
      await this.removeDependents(
        tx,
        c,
        { projectId: project.id },
        `project ${project.slug}`,
        force,
      );
      await tx.query("DELETE FROM projects WHERE id = $1 AND organization_id = $2", [
        project.id,
        c.organizationId,
      ]);
      await recordAudit(tx, {
        organizationId: c.organizationId,
        actor: c.actor,
        action: "project.delete",
        target: { type: "project", id: project.id },
        details: { slug: project.slug, force },
      });
      await appendEvent(tx, {
        organizationId: c.organizationId,
        type: "project.deleted",
        subjectId: project.id,
        payload: { slug: project.slug },
      });
    });
  }

  async createEnvironment(
    c: Caller,
    projectRef: string,
    nameText: string,
    slugText: string,
  ): Promise<Environment> {
    const name = checkName("name", nameText);
    const slug = slugText ? checkSlug("slug", slugText) : slugFrom(name, "env");
    return this.db.tx(async (tx) => {
      const project = await this.getProject(c, projectRef, tx);
      const environment = await this.insertEnvironment(tx, c, project.id, name, slug);
      await this.announceEnvironment(tx, c, environment);
      await recordAudit(tx, {
        organizationId: c.organizationId,
        actor: c.actor,
        action: "environment.create",
        target: { type: "environment", id: environment.id },
        details: { project: project.slug, slug },
      });
      return environment;
    });
  }

  private async insertEnvironment(
    tx: Queryable,
    c: Caller,
    projectId: string,
    name: string,
    slug: string,
  ): Promise<Environment> {
    try {
      const { rows } = await tx.query<EnvironmentRow>(
        `INSERT INTO environments (id, organization_id, project_id, slug, name) VALUES ($1, $2, $3, $4, $5)
         RETURNING ${ENVIRONMENT_COLUMNS}`,
        [uuidv7(), c.organizationId, projectId, slug, name],
      );
      return toEnvironment(rows[0]!);
    } catch (err) {
      if (isUniqueViolation(err)) {
        throw new FlotillaError(
          "resource.already_exists",
          `an environment with slug "${slug}" already exists in this project`,
          {
            field: "slug",
          },
        );
      }
      throw err;
    }
  }

  private async announceEnvironment(tx: Queryable, c: Caller, e: Environment): Promise<void> {
    await appendEvent(tx, {
      organizationId: c.organizationId,
      type: "environment.created",
      subjectId: e.id,
      payload: { project_id: e.projectId, slug: e.slug, name: e.name },
    });
  }

  async listEnvironments(c: Caller, projectRef: string): Promise<Environment[]> {
    const project = await this.getProject(c, projectRef);
    const { rows } = await this.db.query<EnvironmentRow>(
      `SELECT ${ENVIRONMENT_COLUMNS} FROM environments WHERE organization_id = $1 AND project_id = $2
       ORDER BY created_at, slug`,
      [c.organizationId, project.id],
    );
    return rows.map(toEnvironment);
  }

  /** An environment of the caller's organization, or not found. Other modules use this to check ids. */
  async getEnvironment(
    c: Caller,
    idText: string,
    q: Queryable = this.db,
    field = "environment_id",
  ): Promise<Environment> {
    const id = checkId(field, idText);
    const { rows } = await q.query<EnvironmentRow>(
      `SELECT ${ENVIRONMENT_COLUMNS} FROM environments WHERE id = $1 AND organization_id = $2`,
      [id, c.organizationId],
    );
    if (!rows[0]) throw notFound(`environment ${id}`);
    return toEnvironment(rows[0]);
  }

  async renameEnvironment(c: Caller, idText: string, nameText: string): Promise<Environment> {
    const name = checkName("name", nameText);
    return this.db.tx(async (tx) => {
      const env = await this.getEnvironment(c, idText, tx);
      const { rows } = await tx.query<EnvironmentRow>(
        `UPDATE environments SET name = $3, updated_at = now() WHERE id = $1 AND organization_id = $2
         RETURNING ${ENVIRONMENT_COLUMNS}`,
        [env.id, c.organizationId, name],
      );
      await recordAudit(tx, {
        organizationId: c.organizationId,
        actor: c.actor,
        action: "environment.rename",
        target: { type: "environment", id: env.id },
        details: { from: env.name, to: name },
      });
      await appendEvent(tx, {
        organizationId: c.organizationId,
        type: "environment.renamed",
        subjectId: env.id,
        payload: { name },
      });
      return toEnvironment(rows[0]!);
    });
  }

  async deleteEnvironment(c: Caller, idText: string, force: boolean): Promise<void> {
    await this.db.tx(async (tx) => {
      const env = await this.getEnvironment(c, idText, tx);
      await this.removeDependents(
        tx,
        c,
        { environmentId: env.id },
        `environment ${env.slug}`,
        force,
      );
      await tx.query("DELETE FROM environments WHERE id = $1 AND organization_id = $2", [
        env.id,
        c.organizationId,
      ]);
      await recordAudit(tx, {
        organizationId: c.organizationId,
        actor: c.actor,
        action: "environment.delete",
        target: { type: "environment", id: env.id },
        details: { slug: env.slug, force },
      });
      await appendEvent(tx, {
        organizationId: c.organizationId,
        type: "environment.deleted",
        subjectId: env.id,
        payload: { project_id: env.projectId, slug: env.slug },
      });
    });
  }

  private async removeDependents(
    tx: Queryable,
    c: Caller,
    scope: Scope,
    what: string,
    force: boolean,
  ) {
    const running = await this.dependents.running(tx, c.organizationId, scope);
    if (running.length > 0 && !force) {
      throw new FlotillaError(
        "resource.in_use",
        `${what} has running services: ${running.join(", ")}; stop them first or pass force (--force in the CLI)`,
      );
    }
    const environmentIds =
      "environmentId" in scope
        ? [scope.environmentId]
        : (
            await tx.query<{ id: string }>(
              "SELECT id FROM environments WHERE project_id = $1 AND organization_id = $2",
              [scope.projectId, c.organizationId],
            )
          ).rows.map((r) => r.id);
    for (const id of environmentIds)
      await this.dependents.removeEnvironment(tx, c.organizationId, id);
  }
}
