// Exclusive ownership of an embedded data directory by one process, through a pid lock file.
import { closeSync, openSync, readFileSync, unlinkSync, writeSync } from "node:fs";
import { resolve } from "node:path";
import { FlotillaError } from "../shared/index.js";

export interface LockFile {
  path: string;
  release(): void;
}

/** Lock files this process holds. A file naming our own pid is ours only if it is in here. */
const heldHere = new Set<string>();

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    // EPERM: the process exists but belongs to someone else.
    return (err as NodeJS.ErrnoException).code === "EPERM";
  }
}

/**
 * Takes the lock or throws store.locked naming the holder's pid. A lock left by a dead process
 * (a crash or SIGKILL) is taken over, since nothing can still be writing through it.
 */
export function acquireLockFile(path: string): LockFile {
  const key = resolve(path);
  // Our own pid in the file is either a lock taken earlier in this process (refuse: two stores on
  // one directory corrupt it) or one left by a dead process whose pid we reuse (take it over).
  if (heldHere.has(key)) {
    throw new FlotillaError(
      "store.locked",
      `the data directory is in use by process ${process.pid} (this process; lock file ${path}); close the store that holds it first`,
    );
  }
  for (let attempt = 0; attempt < 3; attempt++) {
    try {
      const fd = openSync(path, "wx", 0o600);
      writeSync(fd, `${process.pid}\n`);
      closeSync(fd);
      heldHere.add(key);
      let released = false;
      return {
        path,
        release() {
          if (released) return;
          released = true;
          heldHere.delete(key);
          try {
            if (readFileSync(path, "utf8").trim() === String(process.pid)) unlinkSync(path);
          } catch {
            // Already gone: nothing to release.
          }
        },
      };
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "EEXIST") throw err;
      let holder = Number.NaN;
      try {
        holder = Number.parseInt(readFileSync(path, "utf8").trim(), 10);
      } catch {
        continue; // removed between our open and read: try again
      }
      if (Number.isInteger(holder) && holder > 0 && isAlive(holder) && holder !== process.pid) {
        throw new FlotillaError(
          "store.locked",
          `the data directory is in use by process ${holder} (lock file ${path}); stop that process or choose another --data-dir`,
        );
      }
      try {
        unlinkSync(path);
      } catch {
        // Another starter removed it first; the next attempt decides.
      }
    }
  }
  throw new FlotillaError("store.locked", `could not take the lock file ${path}`);
}
