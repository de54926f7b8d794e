// Finding the host's PostgreSQL binaries for the exec driver's postgres16 template, and the error
// that lists every place looked when there are none.
import { chmodSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { findPostgresBinaries } from "../../src/agent/postgres.js";

const dir = mkdtempSync(join(tmpdir(), "flotilla-pgbin-"));
const BINARIES = ["postgres", "initdb", "pg_dump", "pg_restore"];

function fakeBinDir(path: string, names = BINARIES) {
  mkdirSync(path, { recursive: true });
  for (const n of names) {
    writeFileSync(join(path, n), "#!/bin/sh\n");
    chmodSync(join(path, n), 0o755);
  }
  return path;
}

describe("PostgreSQL binaries for the exec driver", () => {
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it("takes PATH first, then the newest /usr/lib/postgresql/<version>/bin", () => {
    const lib = join(dir, "lib");
    fakeBinDir(join(lib, "9.6", "bin"));
    fakeBinDir(join(lib, "15", "bin"));
    fakeBinDir(join(lib, "16", "bin"));
    expect(findPostgresBinaries({ PATH: "/nonexistent" }, lib).dir).toBe(join(lib, "16", "bin"));
    const onPath = fakeBinDir(join(dir, "path-bin"));
    expect(findPostgresBinaries({ PATH: `/nonexistent:${onPath}` }, lib).dir).toBe(onPath);
  });

  it("skips a directory that lacks one of the binaries it needs (pg_restore)", () => {
    const partial = fakeBinDir(join(dir, "partial"), ["postgres", "initdb", "pg_dump"]);
    const lib = join(dir, "lib2");
    fakeBinDir(join(lib, "15", "bin"));
    expect(findPostgresBinaries({ PATH: partial }, lib).dir).toBe(join(lib, "15", "bin"));
  });

  it("FLOTILLA_POSTGRES_BINDIR wins", () => {
    const chosen = fakeBinDir(join(dir, "chosen"));
    const onPath = fakeBinDir(join(dir, "other"));
    expect(
      findPostgresBinaries({ PATH: onPath, FLOTILLA_POSTGRES_BINDIR: chosen }, join(dir, "none"))
        .dir,
    ).toBe(chosen);
  });

  it("none anywhere: a clear error naming PATH's directories and the versions directory", () => {
    expect(() => findPostgresBinaries({ PATH: "/a/bin:/b/bin" }, join(dir, "empty-lib"))).toThrow(
      /not found on this server; looked in PATH \(\/a\/bin, \/b\/bin\); .*empty-lib\/\*\/bin \(no versions installed\)/,
    );
  });

  it("finds this machine's own PostgreSQL (the tests run it)", () => {
    expect(findPostgresBinaries({ PATH: "/usr/bin:/bin" }).postgres).toMatch(
      /\/usr\/lib\/postgresql\/\d+\/bin\/postgres$/,
    );
  });
});
