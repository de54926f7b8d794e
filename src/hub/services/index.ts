// Public entry of the services module: services, deployments, and the agent-report path.
export type {
  ConfigPort,
  DispatchPort,
  EnvironmentsPort,
  LifecycleOp,
  PlacementPort,
} from "./ports.js";
export {
  lockServiceRow,
  type PublicFacts,
  publicFacts,
  publicServiceIds,
} from "./public.js";
export {
  type CreateDatabaseInput,
  type CreateServiceInput,
  type Deployment,
  type DeploymentReason,
  type Observation,
  type ObservedStatus,
  type Service,
  ServicesService,
  type UpdateServiceInput,
  type Visibility,
} from "./service.js";
export { checkSpec, type ServiceSpec, type SpecInput } from "./spec.js";
export {
  CREDENTIAL_KEYS,
  type DatabaseTemplate,
  TEMPLATES,
  templateOf,
} from "./templates.js";
