// Ports the gateways module consumes: the data planes a gateway may belong to.
import type { Caller } from "../../shared/index.js";
import type { Queryable } from "../../store/index.js";

export interface DataPlanePort {
  /** A data plane by id or name in the caller's organization ("" or "default": the default one). */
  get(c: Caller, ref: string, q: Queryable): Promise<{ id: string }>;
}
