// Where the CLI keeps the hub URL and API token between commands: a 0600 file in the user's config dir.
import { chmodSync, existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { homedir } from "node:os";
import { join } from "node:path";

export interface Credentials {
  hub: string;
  token: string;
  tokenId?: string;
  organization?: string;
  email?: string;
}

export function configDir(env: NodeJS.ProcessEnv = process.env): string {
  if (env.FLOTILLA_CONFIG_DIR) return env.FLOTILLA_CONFIG_DIR;
  return join(env.XDG_CONFIG_HOME || join(homedir(), ".config"), "flotilla");
}

const file = () => join(configDir(), "credentials.json");

export function loadCredentials(): Credentials | undefined {
  if (!existsSync(file())) return undefined;
  return JSON.parse(readFileSync(file(), "utf8")) as Credentials;
}

export function saveCredentials(c: Credentials): string {
  mkdirSync(configDir(), { recursive: true, mode: 0o700 });
  writeFileSync(file(), `${JSON.stringify(c, null, 2)}\n`, { mode: 0o600 });
  chmodSync(file(), 0o600);
  return file();
}

export function removeCredentials(): void {
  rmSync(file(), { force: true });
}
