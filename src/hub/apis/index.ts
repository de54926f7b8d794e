// Public entry of the apis module: API definitions, consumer keys, deployments to gateways.
export type { GatewayLookupPort, SealerPort, ServiceLookupPort } from "./ports.js";
export {
  type Api,
  type ApiDeployment,
  ApisService,
  type ConsumerKey,
  configHash,
  type DeploymentState,
  type ExpectedDeployment,
  type GatewayReport,
} from "./service.js";
