// Self-signed certificates (openssl), for tests of TLS listeners: one for 127.0.0.1 and localhost,
// and pairs for chosen subjectAltNames written where a certificate directory wants them; and the
// common name a listener presents for a server name.
import { execFileSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { connect } from "node:tls";

/** Writes key.pem and cert.pem (valid one day) into `dir` and returns both. */
export function selfSignedCert(dir: string): { cert: Buffer; key: Buffer } {
  execFileSync(
    "openssl",
    [
      "req",
      "-x509",
      "-newkey",
      "rsa:2048",
      "-nodes",
      "-days",
      "1",
      "-subj",
      "/CN=localhost",
      "-addext",
      "subjectAltName=IP:127.0.0.1,DNS:localhost",
      "-keyout",
      join(dir, "key.pem"),
      "-out",
      join(dir, "cert.pem"),
    ],
    { stdio: "ignore" },
  );
  return { cert: readFileSync(join(dir, "cert.pem")), key: readFileSync(join(dir, "key.pem")) };
}

/**
 * Writes a self-signed certificate and its key (valid `days`) for `altNames` (openssl's
 * subjectAltName syntax, "DNS:a.example,DNS:*.b.example") to `certPath` and `keyPath`.
 */
export function selfSignedPair(
  certPath: string,
  keyPath: string,
  altNames: string,
  commonName = "flotilla-test",
  days = 1,
): { cert: Buffer; key: Buffer } {
  execFileSync(
    "openssl",
    [
      "req",
      "-x509",
      "-newkey",
      "ec",
      "-pkeyopt",
      "ec_paramgen_curve:prime256v1",
      "-nodes",
      "-days",
      String(days),
      "-subj",
      `/CN=${commonName}`,
      ...(altNames ? ["-addext", `subjectAltName=${altNames}`] : []),
      "-keyout",
      keyPath,
      "-out",
      certPath,
    ],
    { stdio: "ignore" },
  );
  return { cert: readFileSync(certPath), key: readFileSync(keyPath) };
}

/** The common name of the certificate a TLS listener on loopback presents for `servername`. */
export function presentedCommonName(port: number, servername?: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = connect({
      host: "127.0.0.1",
      port,
      rejectUnauthorized: false,
      ...(servername === undefined ? {} : { servername }),
    });
    socket.once("secureConnect", () => {
      const subject = socket.getPeerX509Certificate()?.subject ?? "";
      socket.end();
      resolve(/CN=([^\n]+)/.exec(subject)?.[1] ?? "");
    });
    socket.once("error", reject);
  });
}
