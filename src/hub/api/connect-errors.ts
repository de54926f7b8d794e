// Flotilla's errors as the Connect errors clients see: the catalogue's code and field as metadata.
import { Code, ConnectError } from "@connectrpc/connect";
import {
  ERROR_CODE_HEADER,
  ERROR_FIELD_HEADER,
  type ErrorCode,
  FlotillaError,
} from "../../shared/index.js";

/** The Connect error a client sees: the message, plus the stable code and field as metadata. */
export function toConnectError(err: unknown): ConnectError {
  if (err instanceof FlotillaError) {
    const metadata = new Headers({ [ERROR_CODE_HEADER]: err.code });
    if (err.field) metadata.set(ERROR_FIELD_HEADER, err.field);
    return new ConnectError(err.message, err.connectCode as number as Code, metadata);
  }
  if (err instanceof ConnectError) {
    // Connect's own decode and size errors: stamp them with our catalogue code.
    if (!err.metadata.has(ERROR_CODE_HEADER)) {
      const code: ErrorCode =
        err.code === Code.InvalidArgument
          ? "request.malformed"
          : err.code === Code.ResourceExhausted
            ? "request.too_large"
            : "internal";
      if (code !== "internal") err.metadata.set(ERROR_CODE_HEADER, code);
    }
    return err;
  }
  return new ConnectError(
    "internal error",
    Code.Internal,
    new Headers({ [ERROR_CODE_HEADER]: "internal" }),
  );
}
