// Public entry of the agent: join a hub, keep the control channel, execute dispatches once.
export { AGENT_VERSION, type Agent, type AgentOptions, startAgent } from "./agent.js";
