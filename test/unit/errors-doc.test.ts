// Every error code in the catalogue is documented in docs/errors.md, and nothing documented is stale.
import { readFileSync } from "node:fs";
import { resolve } from "node:path";
import { describe, expect, it } from "vitest";
import { toConnectError } from "../../src/hub/index.js";
import { ERROR_CATALOGUE, FlotillaError } from "../../src/shared/index.js";

const doc = readFileSync(resolve(import.meta.dirname, "../../docs/errors.md"), "utf8");
const documented = [...doc.matchAll(/^\| `([a-z_.]+)` \|/gm)].map((m) => m[1]);

describe("error catalogue", () => {
  it("documents every code in docs/errors.md", () => {
    expect(documented.sort()).toEqual(Object.keys(ERROR_CATALOGUE).sort());
  });

  it("maps each code to the Connect code and HTTP status the catalogue names", () => {
    for (const code of Object.keys(ERROR_CATALOGUE) as Array<keyof typeof ERROR_CATALOGUE>) {
      const err = toConnectError(new FlotillaError(code, "x", { field: "a.b" }));
      expect(err.code).toBe(ERROR_CATALOGUE[code].connect);
      expect(err.metadata.get("flotilla-error-code")).toBe(code);
      expect(err.metadata.get("flotilla-error-field")).toBe("a.b");
    }
  });

  it("hides the message of unexpected errors behind 'internal error'", () => {
    const err = toConnectError(new Error("password=hunter2 leaked"));
    expect(err.rawMessage).toBe("internal error");
    expect(err.metadata.get("flotilla-error-code")).toBe("internal");
  });
});
