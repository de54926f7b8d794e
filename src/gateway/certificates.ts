// The data port's certificates by server name (SNI): PEM pairs read from a directory, each serving
// the DNS names of its subjectAltName, looked up per TLS handshake and replaced as a whole.
import { createPrivateKey, X509Certificate } from "node:crypto";
import { readdirSync, readFileSync, statSync } from "node:fs";
import { join } from "node:path";
import { createSecureContext, type SecureContext } from "node:tls";
import { FlotillaError } from "../shared/index.js";

/** One certificate (with its chain) and its key, and the DNS names it serves. */
export interface NamedCertificate {
  /** Where it was read from, for messages. */
  source: string;
  names: string[];
  /** When the certificate expires (ms since the epoch): of two naming one host, the later wins. */
  notAfter: number;
  context: SecureContext;
}

/** The two layouts a directory may hold: certbot's `live/` (one directory per name) and flat files. */
const CERTBOT_CHAIN = "fullchain.pem";
const CERTBOT_KEY = "privkey.pem";

function invalid(message: string): FlotillaError {
  return new FlotillaError("config.invalid", message);
}

function unreadable(path: string, err: unknown): FlotillaError {
  return invalid(`cannot read ${path}: ${(err as NodeJS.ErrnoException).code ?? "error"}`);
}

function readPem(path: string): Buffer {
  try {
    return readFileSync(path);
  } catch (err) {
    throw unreadable(path, err);
  }
}

/** What is at `path`: a directory, something else, or nothing; config.invalid if it cannot tell. */
function kindOf(path: string): "directory" | "other" | "none" {
  try {
    const stat = statSync(path, { throwIfNoEntry: false });
    return stat === undefined ? "none" : stat.isDirectory() ? "directory" : "other";
  } catch (err) {
    throw unreadable(path, err); // A symlink loop (ELOOP), a folder it may not search (EACCES).
  }
}

/** Checks a pair (the key is the certificate's, the PEM parses) and reads its DNS names. */
function namedCertificate(source: string, cert: Buffer, key: Buffer): NamedCertificate {
  let x509: X509Certificate;
  try {
    x509 = new X509Certificate(cert);
  } catch {
    throw invalid(`${source}: not a PEM certificate`);
  }
  let matches: boolean;
  try {
    matches = x509.checkPrivateKey(createPrivateKey(key));
  } catch {
    throw invalid(`${source}: its key is not a PEM private key`);
  }
  if (!matches) throw invalid(`${source}: the key is not the certificate's`);
  // "DNS:a.example, DNS:*.b.example, IP Address:127.0.0.1": clients match names against these
  // alone (RFC 6125); the subject's CN is not read.
  const names = (x509.subjectAltName ?? "")
    .split(", ")
    .filter((entry) => entry.startsWith("DNS:"))
    .map((entry) => entry.slice(4).toLowerCase());
  if (names.length === 0) throw invalid(`${source}: the certificate names no DNS subjectAltName`);
  let context: SecureContext;
  try {
    context = createSecureContext({ cert, key });
  } catch (err) {
    // A pair OpenSSL will not serve (a key below its security level, say).
    throw invalid(`${source}: ${(err as Error).message}`);
  }
  return { source, names, notAfter: Date.parse(x509.validTo), context };
}

/**
 * Every pair in `dir`: `NAME.crt` with `NAME.key`, and `NAME/fullchain.pem` with
 * `NAME/privkey.pem` (certbot's `live/` directory). A certificate without its key, a key that is
 * not its certificate's, or a directory with no pair at all is config.invalid: a gateway does
 * not start (or reload) with half its certificates.
 */
export function readCertificateDir(dir: string): NamedCertificate[] {
  let entries: string[];
  try {
    entries = readdirSync(dir).sort();
  } catch (err) {
    throw invalid(`cannot read ${dir}: ${(err as NodeJS.ErrnoException).code ?? "error"}`);
  }
  const pairs: NamedCertificate[] = [];
  for (const entry of entries) {
    const path = join(dir, entry);
    if (entry.endsWith(".crt")) {
      const keyPath = `${path.slice(0, -4)}.key`;
      pairs.push(namedCertificate(path, readPem(path), readPem(keyPath)));
    } else if (kindOf(path) === "directory") {
      const chain = join(path, CERTBOT_CHAIN);
      if (kindOf(chain) === "none") continue; // keys/, accounts/: not a certificate's directory.
      pairs.push(namedCertificate(chain, readPem(chain), readPem(join(path, CERTBOT_KEY))));
    }
  }
  if (pairs.length === 0)
    throw invalid(`${dir} holds no certificate (NAME.crt with NAME.key, or NAME/${CERTBOT_CHAIN})`);
  return pairs;
}

/**
 * Server name -> secure context, exact names before wildcards (`*.b.example` covers one label:
 * `x.b.example`, not `b.example` nor `y.x.b.example`). A name two certificates claim goes to the
 * one that expires last: certbot leaves the old lineage's directory (`example.com/`) beside a
 * re-issued one (`example.com-0001/`). Replaced whole by `set`, so a handshake sees the old set or
 * the new one.
 */
export class CertificatesByName {
  private exact = new Map<string, SecureContext>();
  private wildcard = new Map<string, SecureContext>();

  constructor(pairs: NamedCertificate[] = []) {
    this.set(pairs);
  }

  set(pairs: NamedCertificate[]): void {
    const exact = new Map<string, SecureContext>();
    const wildcard = new Map<string, SecureContext>();
    const latestFirst = [...pairs].sort((a, b) => b.notAfter - a.notAfter);
    for (const pair of latestFirst) {
      for (const name of pair.names) {
        const into = name.startsWith("*.") ? wildcard : exact;
        const key = name.startsWith("*.") ? name.slice(2) : name;
        if (!into.has(key)) into.set(key, pair.context);
      }
    }
    this.exact = exact;
    this.wildcard = wildcard;
  }

  /** The context for a client's server name, or undefined (the default certificate answers). */
  find(serverName: string): SecureContext | undefined {
    // "a.example." (a fully qualified name some clients keep) is "a.example".
    const name = (serverName.endsWith(".") ? serverName.slice(0, -1) : serverName).toLowerCase();
    const hit = this.exact.get(name);
    if (hit) return hit;
    const dot = name.indexOf(".");
    return dot > 0 ? this.wildcard.get(name.slice(dot + 1)) : undefined;
  }
}
