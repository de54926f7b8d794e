// Public entry of the control module: the agents' WebSocket control channel on a hub replica.
export { ControlChannel, type ControlChannelOptions, type StatusSink } from "./channel.js";
