// Public entry of the control module: the agents' WebSocket control channel on a hub replica,
// route() for dispatches, and the synchronous wait over asynchronous delivery.
export { ControlChannel, type ControlChannelOptions, type StatusSink } from "./channel.js";
export { AgentProber } from "./fleet-probe.js";
export { DispatchRouter, type Route, type RouterOptions } from "./router.js";
export {
  captureDispatches,
  DispatchWaiter,
  dispatchWaitedFor,
  MAX_WAIT_SECONDS,
  noteDispatch,
  routingInterceptor,
  type WaitOptions,
} from "./waiter.js";
