// Connect handlers for ProjectService: projects and environments.
import type { ConnectRouter } from "@connectrpc/connect";
import { ProjectService as ProjectRpc } from "../../gen/flotilla/v1/projects_pb.js";
import type { Environment, Project, ProjectsService } from "../projects/index.js";
import { caller, ts } from "./handler-context.js";

const project = (p: Project) => ({
  id: p.id,
  slug: p.slug,
  name: p.name,
  createdAt: ts(p.createdAt),
  updatedAt: ts(p.updatedAt),
});

const environment = (e: Environment) => ({
  id: e.id,
  projectId: e.projectId,
  slug: e.slug,
  name: e.name,
  createdAt: ts(e.createdAt),
});

export function projectRoutes(router: ConnectRouter, projects: ProjectsService): void {
  router.service(ProjectRpc, {
    async createProject(req, ctx) {
      const r = await projects.createProject(caller(ctx), req.name, req.slug);
      return { project: project(r.project), production: environment(r.production) };
    },
    async listProjects(_req, ctx) {
      return { projects: (await projects.listProjects(caller(ctx))).map(project) };
    },
    async getProject(req, ctx) {
      const r = await projects.getProjectWithEnvironments(caller(ctx), req.project);
      return { project: project(r.project), environments: r.environments.map(environment) };
    },
    async renameProject(req, ctx) {
      return { project: project(await projects.renameProject(caller(ctx), req.project, req.name)) };
    },
    async deleteProject(req, ctx) {
      await projects.deleteProject(caller(ctx), req.project, req.force);
      return {};
    },
    async createEnvironment(req, ctx) {
      const e = await projects.createEnvironment(caller(ctx), req.project, req.name, req.slug);
      return { environment: environment(e) };
    },
    async listEnvironments(req, ctx) {
      const list = await projects.listEnvironments(caller(ctx), req.project);
      return { environments: list.map(environment) };
    },
    async renameEnvironment(req, ctx) {
      const e = await projects.renameEnvironment(caller(ctx), req.environmentId, req.name);
      return { environment: environment(e) };
    },
    async deleteEnvironment(req, ctx) {
      await projects.deleteEnvironment(caller(ctx), req.environmentId, req.force);
      return {};
    },
  });
}
