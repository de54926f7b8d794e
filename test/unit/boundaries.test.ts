// Module boundaries: code reaches another module only through that module's index.ts.
import { readdirSync, readFileSync, statSync } from "node:fs";
import { dirname, join, relative, resolve } from "node:path";
import { describe, expect, it } from "vitest";

const SRC = resolve(import.meta.dirname, "../../src");

function files(dir: string): string[] {
  return readdirSync(dir).flatMap((name) => {
    const p = join(dir, name);
    return statSync(p).isDirectory() ? files(p) : p.endsWith(".ts") ? [p] : [];
  });
}

/** The module a file belongs to: src/<top> or, under src/hub, src/hub/<module>; hub's own root files form "hub". */
function moduleOf(file: string): string {
  const parts = relative(SRC, file).split("/");
  if (parts[0] === "hub" && parts.length > 2) return `hub/${parts[1]}`;
  return parts[0] === "hub" ? "hub" : parts[0]!;
}

const IMPORT = /(?:import|export)[^"']*?from\s+["']([^"']+)["']/g;

describe("module boundaries", () => {
  const violations: string[] = [];
  for (const file of files(SRC).filter((f) => !f.includes("/gen/"))) {
    const source = readFileSync(file, "utf8");
    for (const match of source.matchAll(IMPORT)) {
      const spec = match[1]!;
      if (!spec.startsWith(".")) continue;
      const target = resolve(dirname(file), spec.replace(/\.js$/, ".ts"));
      if (target.includes("/gen/")) continue; // generated contract code is shared by design
      if (moduleOf(target) === moduleOf(file)) continue;
      if (!target.endsWith("/index.ts")) violations.push(`${relative(SRC, file)} imports ${spec}`);
    }
  }

  it("imports across modules go through the other module's index.ts", () => {
    expect(violations).toEqual([]);
  });

  it("the check sees cross-module imports at all (guards against a regex that matches nothing)", () => {
    const server = readFileSync(join(SRC, "hub/server.ts"), "utf8");
    expect([...server.matchAll(IMPORT)].map((m) => m[1])).toContain("../store/index.js");
  });
});
