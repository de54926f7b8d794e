// The error catalogue: every error Flotilla returns has a stable code mapped to a Connect code and an HTTP status.

/**
 * Connect's status codes, by the numbers of @connectrpc/connect's Code enum. Kept here so the
 * transport contract does not load the Connect runtime: an agent imports this module, and the
 * runtime alone costs it 10 MB of its 60 MB budget.
 */
export const ConnectCode = {
  InvalidArgument: 3,
  DeadlineExceeded: 4,
  NotFound: 5,
  AlreadyExists: 6,
  PermissionDenied: 7,
  ResourceExhausted: 8,
  FailedPrecondition: 9,
  Internal: 13,
  Unavailable: 14,
  Unauthenticated: 16,
} as const;
type ConnectCodeNumber = (typeof ConnectCode)[keyof typeof ConnectCode];

interface CatalogueEntry {
  connect: ConnectCodeNumber;
  http: number;
  /** What the code means and what the caller can do about it (rendered into docs/errors.md). */
  meaning: string;
}

export const ERROR_CATALOGUE = {
  "request.malformed": {
    connect: ConnectCode.InvalidArgument,
    http: 400,
    meaning:
      "The body is not valid JSON or protobuf, a field has the wrong type, or an enum value is unknown. The message names the field.",
  },
  "request.too_large": {
    connect: ConnectCode.InvalidArgument,
    http: 400,
    meaning:
      "The request body exceeds the documented limit (1 MiB by default, `--max-body-bytes`).",
  },
  "validation.failed": {
    connect: ConnectCode.InvalidArgument,
    http: 400,
    meaning: "A field is missing, too long or out of range. `field` names it; fix it and retry.",
  },
  "auth.unauthenticated": {
    connect: ConnectCode.Unauthenticated,
    http: 401,
    meaning:
      "No valid session cookie or bearer token was presented, or it expired or was revoked. Log in again.",
  },
  "auth.invalid_credentials": {
    connect: ConnectCode.Unauthenticated,
    http: 401,
    meaning: "The email or password is wrong. The error does not say which.",
  },
  "auth.rate_limited": {
    connect: ConnectCode.ResourceExhausted,
    http: 429,
    meaning: "Too many failed logins for this email or address; wait for the window to pass.",
  },
  "auth.permission_denied": {
    connect: ConnectCode.PermissionDenied,
    http: 403,
    meaning: "Your role in this organization lacks the capability the call needs.",
  },
  "auth.tenant_mismatch": {
    connect: ConnectCode.PermissionDenied,
    http: 403,
    meaning:
      "The x-tenant-id header names an organization other than the one you are signed in to. Drop the header or sign in to that organization.",
  },
  "auth.setup_closed": {
    connect: ConnectCode.FailedPrecondition,
    http: 400,
    meaning: "First-owner setup was already completed; sign in instead.",
  },
  "auth.setup_token_invalid": {
    connect: ConnectCode.PermissionDenied,
    http: 403,
    meaning: "The setup token is wrong. It is printed by the hub at its first start.",
  },
  "resource.not_found": {
    connect: ConnectCode.NotFound,
    http: 404,
    meaning:
      "No such object in your organization (objects of other organizations also answer this).",
  },
  "resource.already_exists": {
    connect: ConnectCode.AlreadyExists,
    http: 409,
    meaning: "An object with this unique name already exists. `field` names the clashing field.",
  },
  "resource.in_use": {
    connect: ConnectCode.FailedPrecondition,
    http: 400,
    meaning:
      "The object still has running dependents (the message names them). Stop them, or repeat with force.",
  },
  "resource.conflict": {
    connect: ConnectCode.FailedPrecondition,
    http: 400,
    meaning:
      "The request contradicts the object's state (for example a rollback to a deployment of another service).",
  },
  "membership.last_owner": {
    connect: ConnectCode.FailedPrecondition,
    http: 400,
    meaning: "The organization must keep at least one owner; promote another member first.",
  },
  "membership.account_held_elsewhere": {
    connect: ConnectCode.FailedPrecondition,
    http: 400,
    meaning:
      "The email's account was made by another organization's owner, who set its password, so it cannot join yours. Ask the person for another email address.",
  },
  "store.locked": {
    connect: ConnectCode.Unavailable,
    http: 503,
    meaning:
      "Another process holds the embedded data directory. Stop it or pick another --data-dir.",
  },
  "store.migration_changed": {
    connect: ConnectCode.FailedPrecondition,
    http: 400,
    meaning:
      "An applied migration file was edited. Restore the original file; never edit applied migrations.",
  },
  "agent.unavailable": {
    connect: ConnectCode.Unavailable,
    http: 503,
    meaning: "The server's agent is not connected (to this hub). Retry when the server is online.",
  },
  "dispatch.timeout": {
    connect: ConnectCode.DeadlineExceeded,
    http: 504,
    meaning:
      "A request that waits for its operation (`wait_seconds`) saw no progress for that long. The message names the dispatch id: the operation goes on; follow it with `flotilla servers dispatches SERVER`.",
  },
  "store.unavailable": {
    connect: ConnectCode.Unavailable,
    http: 503,
    meaning: "The database could not be reached. The call can be retried.",
  },
  "server.draining": {
    connect: ConnectCode.Unavailable,
    http: 503,
    meaning: "This hub is shutting down; retry against another replica.",
  },
  "config.invalid": {
    connect: ConnectCode.InvalidArgument,
    http: 400,
    meaning:
      "A command-line option or environment variable has an invalid value. The message names it.",
  },
  "events.stream_incompatible": {
    connect: ConnectCode.FailedPrecondition,
    http: 400,
    meaning:
      "An existing NATS stream's config breaks Flotilla's contract (the message and `field` name what). Flotilla never changes a stream: edit it with `nats stream edit` or point --nats-stream at another one.",
  },
  "events.unavailable": {
    connect: ConnectCode.Unavailable,
    http: 503,
    meaning:
      "The NATS event backbone is not configured on this hub (--nats-url) or not connected. Retry later or against a replica that has it.",
  },
  internal: {
    connect: ConnectCode.Internal,
    http: 500,
    meaning: "A bug. The correlation id in the response finds the log lines.",
  },
} as const satisfies Record<string, CatalogueEntry>;

export type ErrorCode = keyof typeof ERROR_CATALOGUE;

export class FlotillaError extends Error {
  readonly code: ErrorCode;
  readonly field: string | undefined;

  constructor(code: ErrorCode, message: string, options: { field?: string; cause?: unknown } = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = "FlotillaError";
    this.code = code;
    this.field = options.field;
  }

  get connectCode(): ConnectCodeNumber {
    return ERROR_CATALOGUE[this.code].connect;
  }

  get httpStatus(): number {
    return ERROR_CATALOGUE[this.code].http;
  }
}

export const invalid = (field: string, message: string) =>
  new FlotillaError("validation.failed", `${field}: ${message}`, { field });

export const notFound = (what: string) =>
  new FlotillaError("resource.not_found", `${what} not found`);

export const ERROR_CODE_HEADER = "flotilla-error-code";
export const ERROR_FIELD_HEADER = "flotilla-error-field";
