// Public entry of the projects module: projects and environments.
export type { DependentsPort, Scope } from "./ports.js";
export { type Environment, NO_DEPENDENTS, type Project, ProjectsService } from "./service.js";
