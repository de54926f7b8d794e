// Public entry of the shared transport contract: context, trace, errors, logs, metrics, ids.

export * from "./aead.js";
export * from "./api-definitions.js";
export * from "./caller.js";
export * from "./context.js";
export * from "./direct.js";
export * from "./errors.js";
export * from "./frames.js";
export * from "./gateway-protocol.js";
export * from "./http-body.js";
export * from "./ids.js";
export * from "./local-operator.js";
export * from "./log.js";
export * from "./metrics.js";
export * from "./net-address.js";
export * from "./tar.js";
export * from "./trace.js";
export * from "./validate.js";
