// The version agents and gateways report is the package's: the two cannot drift apart.
import { readFileSync } from "node:fs";
import { resolve } from "node:path";
import { describe, expect, it } from "vitest";
import { FLOTILLA_VERSION } from "../../src/shared/index.js";

describe("FLOTILLA_VERSION", () => {
  it("is package.json's version", () => {
    const pkg = JSON.parse(
      readFileSync(resolve(import.meta.dirname, "../../package.json"), "utf8"),
    ) as { version: string };
    expect(FLOTILLA_VERSION).toBe(pkg.version);
  });
});
