// Public entry of the dataplanes module: data planes (groups of servers and gateways), their private links, the controller and provisioners.
export {
  type ConvergeReport,
  DATA_PLANES_CHANNEL,
  DataPlaneController,
  type DataPlaneControllerOptions,
} from "./controller.js";
export {
  type ConvergeState,
  checkLinkConfig,
  checkProvider,
  DUPLICATE_IDENTITY,
  IDENTITY_FIELD,
  type LinkConfig,
  type LinkStatus,
  type PlaneState,
  PROVIDERS,
  type PrivateLink,
  PrivateLinksService,
  type Provider,
} from "./links.js";
export { dataPlaneMetrics } from "./metrics.js";
export {
  type CommandProvisionerOptions,
  commandProvisioner,
  type DesiredLink,
  type LinkResult,
  localProvisioner,
  PROVISIONER_CONTRACT_VERSION,
  type Provisioner,
  type ProvisionerConfig,
  ProvisionerError,
  type ProvisionRequest,
  parseProvisionersOption,
  parseResults,
  provisionersFrom,
} from "./provisioners.js";
export { type DataPlane, DataPlanesService, DEFAULT_DATA_PLANE } from "./service.js";
