// Fails when proto/ does not lint, or when regenerating the checked-in code would change it.
import { execFileSync } from "node:child_process";
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, relative } from "node:path";

const bin = join(process.cwd(), "node_modules", ".bin");
const buf = join(bin, "buf");
// buf finds protoc-gen-es on PATH.
process.env.PATH = `${bin}:${process.env.PATH}`;
execFileSync(buf, ["lint"], { stdio: "inherit" });
const out = mkdtempSync(join(tmpdir(), "flotilla-proto-"));
try {
  execFileSync(buf, ["generate", "-o", out], { stdio: "inherit" });
  const files = (dir) =>
    readdirSync(dir).flatMap((name) => {
      const p = join(dir, name);
      return statSync(p).isDirectory() ? files(p) : [p];
    });
  const fresh = new Map(
    files(join(out, "src/gen")).map((p) => [
      relative(join(out, "src/gen"), p),
      readFileSync(p, "utf8"),
    ]),
  );
  const committed = new Map(
    files("src/gen").map((p) => [relative("src/gen", p), readFileSync(p, "utf8")]),
  );
  const stale = [...new Set([...fresh.keys(), ...committed.keys()])].filter(
    (k) => fresh.get(k) !== committed.get(k),
  );
  if (stale.length) {
    console.error(
      `generated code is stale, run \`npm run proto:gen\` and commit: ${stale.join(", ")}`,
    );
    process.exit(1);
  }
  console.log(`proto: lint clean, ${fresh.size} generated file(s) up to date`);
} finally {
  rmSync(out, { recursive: true, force: true });
}
