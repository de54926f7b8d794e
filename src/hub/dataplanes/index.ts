// Public entry of the dataplanes module: data planes (groups of servers and gateways).
export { type DataPlane, DataPlanesService, DEFAULT_DATA_PLANE } from "./service.js";
