// Finding the host's PostgreSQL binaries for the exec driver's postgres16 template, and the error
// that lists every place looked when there are none; a dead agent's orphaned bootstrap step is
// killed before a data directory is bootstrapped again.
import { spawn } from "node:child_process";
import {
  chmodSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { findPostgresBinaries, killOrphanedStep } from "../../src/agent/postgres.js";

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

describe("an orphaned bootstrap step", () => {
  const markers = mkdtempSync(join(tmpdir(), "flotilla-orphan-"));
  afterAll(() => rmSync(markers, { recursive: true, force: true }));
  const startTime = (pid: number) => {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    return stat.slice(stat.lastIndexOf(")") + 2).split(" ")[19];
  };

  it("named in the marker and still running (same start time) is killed, and the marker removed", async () => {
    const child = spawn("sleep", ["60"], { stdio: "ignore" });
    const exited = new Promise((r) => child.once("exit", (_c, signal) => r(signal)));
    const marker = join(markers, "orphan.pid");
    writeFileSync(marker, `${child.pid} ${startTime(child.pid!)}\n`);
    await killOrphanedStep(marker);
    expect(await exited).toBe("SIGKILL");
    expect(existsSync(marker)).toBe(false);
  });

  it("a marker whose pid now belongs to another process (another start time) kills nothing", async () => {
    const child = spawn("sleep", ["60"], { stdio: "ignore" });
    const marker = join(markers, "recycled.pid");
    writeFileSync(marker, `${child.pid} 1\n`);
    await killOrphanedStep(marker);
    expect(child.exitCode).toBeNull();
    expect(child.signalCode).toBeNull();
    expect(existsSync(marker)).toBe(false);
    child.kill("SIGKILL");
  });
});
