// The gateway process stays lean: from its CLI entry, static imports never reach hub code, the
// store layer, PGlite, pg, Fastify or the Connect runtime (the embedded store alone is ~310 MB).
import { readFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";

const ROOT = join(dirname(fileURLToPath(import.meta.url)), "..", "..");
const FORBIDDEN_PACKAGES = [
  /^@electric-sql\/pglite/,
  /^@connectrpc\//,
  /^fastify/,
  /^@fastify\//,
  /^pg$/,
];
const FORBIDDEN_DIRS = ["src/hub/", "src/store/", "src/agent/", "src/gen/"];
// Static imports and re-exports only: `import()` loads on demand and is not followed.
const STATIC = /^(?:import|export)\s[^;]*?from\s+"([^"]+)";/gms;

function walk(entry: string): { files: Set<string>; packages: Set<string> } {
  const files = new Set<string>();
  const packages = new Set<string>();
  const stack = [entry];
  while (stack.length) {
    const file = stack.pop()!;
    if (files.has(file)) continue;
    files.add(file);
    const text = readFileSync(file, "utf8");
    for (const m of text.matchAll(STATIC)) {
      const spec = m[1]!;
      if (/^import\s+type\s/.test(m[0]) || /^export\s+type\s/.test(m[0])) continue;
      if (spec.startsWith(".")) stack.push(resolve(dirname(file), spec.replace(/\.js$/, ".ts")));
      else packages.add(spec);
    }
  }
  return { files, packages };
}

describe("the gateway process's import graph", () => {
  it("reaches no hub, store, agent or generated code, and none of PGlite, pg, Fastify or Connect", () => {
    const { files, packages } = walk(join(ROOT, "src/cli/gateway-command.ts"));
    const rel = [...files].map((f) => f.slice(ROOT.length + 1));
    expect(rel).toContain("src/gateway/store.ts");
    expect(rel.filter((f) => FORBIDDEN_DIRS.some((d) => f.startsWith(d)))).toEqual([]);
    expect([...packages].filter((p) => FORBIDDEN_PACKAGES.some((r) => r.test(p)))).toEqual([]);
    expect(packages).toContain("better-sqlite3");
    expect(packages).toContain("pino");
    // undici and ws load on first use (src/gateway/lazy.ts), after the data port serves.
    expect(rel).toContain("src/gateway/lazy.ts");
    expect(packages).not.toContain("undici");
    expect(packages).not.toContain("ws");
  });
});
