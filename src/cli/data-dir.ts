// Modes of `flotilla up`'s data directory when it runs as root: traversable to reach the local
// agent's volumes, everything else in it readable by root only.
import { chmodSync, readdirSync, statSync } from "node:fs";
import { join } from "node:path";

/**
 * As root, the local agent runs workloads as an unprivileged user that must walk through the
 * data directory to `agent/volumes/<service>/<volume>`. So the directory becomes traverse-only
 * for others (0711: nobody can list it), and every other entry in it (pgdata, session.secret,
 * flotilla.lock, gateway/) loses all group and other bits, so a known name opens nothing. The
 * agent's directory sets its own modes (ExecDriver's prepareDataDir). Not root: nothing changes;
 * workloads run as the same user and need no traversal.
 */
export function openDataDirForWorkloads(dataDir: string, agentDirName = "agent"): void {
  if (process.getuid?.() !== 0) return;
  for (const name of readdirSync(dataDir)) {
    if (name === agentDirName) continue;
    const path = join(dataDir, name);
    const mode = statSync(path).mode & 0o777;
    if (mode & 0o077) chmodSync(path, mode & 0o700);
  }
  chmodSync(dataDir, 0o711);
}
