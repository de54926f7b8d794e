// The data port's certificates by server name (SNI): pairs read from a directory (NAME.crt with
// NAME.key, and certbot's live/ layout), exact names before one-label wildcards, the default
// certificate for every other name, a reload that replaces the set whole or not at all, and
// directories that do not read whole refused with config.invalid before the gateway starts.
import { mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { connect } from "node:tls";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { deployedRow, type StoredGateway, startStoredGateway } from "../support/gateway.js";
import { presentedCommonName, selfSignedCert, selfSignedPair } from "../support/tls.js";

let dir: string;
let certs: string;
let upstream: Server;
let stored: StoredGateway;
let upstreamUrl: string;

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), "flotilla-gw-sni-"));
  certs = join(dir, "certs");
  mkdirSync(join(certs, "c.example"), { recursive: true });
  selfSignedPair(join(certs, "a.crt"), join(certs, "a.key"), "DNS:a.example", "a");
  selfSignedPair(join(certs, "wild.crt"), join(certs, "wild.key"), "DNS:*.b.example", "wild");
  selfSignedPair(
    join(certs, "c.example", "fullchain.pem"),
    join(certs, "c.example", "privkey.pem"),
    "DNS:c.example,DNS:www.c.example",
    "c",
  );
  // An exact name beats a wildcard; names are matched whatever their case in the certificate.
  selfSignedPair(join(certs, "exact-z.crt"), join(certs, "exact-z.key"), "DNS:z.b.example", "z");
  selfSignedPair(join(certs, "up.crt"), join(certs, "up.key"), "DNS:UP.Example", "up");
  // Two certificates for one name (an old certbot lineage left beside a re-issued one): the one
  // valid longest serves, whichever file comes first.
  selfSignedPair(join(certs, "dup-a.crt"), join(certs, "dup-a.key"), "DNS:dup.example", "short");
  selfSignedPair(join(certs, "dup-b.crt"), join(certs, "dup-b.key"), "DNS:dup.example", "long", 3);
  // Not a certificate directory's business: ignored.
  writeFileSync(join(certs, "README"), "renewed by a cron job\n");
  mkdirSync(join(certs, "keys"));
  const fallback = selfSignedCert(dir);
  upstream = createServer((req, res) => {
    req.resume();
    res.writeHead(200, { "content-type": "text/plain" });
    res.end(`${req.headers.host} ${req.url}`);
  });
  await new Promise<void>((r) => upstream.listen(0, "127.0.0.1", () => r()));
  upstreamUrl = `http://127.0.0.1:${(upstream.address() as AddressInfo).port}`;
  stored = await startStoredGateway(
    [deployedRow("sni-api", { contextPath: "/api", upstream: { url: upstreamUrl } })],
    { tls: { cert: fallback.cert, key: fallback.key }, certificateDir: certs },
  );
});

afterAll(async () => {
  await stored?.close();
  upstream.closeAllConnections();
  await new Promise<void>((r) => upstream.close(() => r()));
  rmSync(dir, { recursive: true, force: true });
});

const port = () => Number(new URL(stored.gateway.url).port);

/** The common name of the certificate the data port presents for `servername` (none: no SNI). */
const presented = (servername?: string, gatewayPort = port()) =>
  presentedCommonName(gatewayPort, servername);

describe("gateway data port: certificates by server name", () => {
  it("gives each server name the certificate naming it, and every other name the default", async () => {
    const cases: Array<[string | undefined, string]> = [
      ["a.example", "a"],
      ["A.Example", "a"],
      ["x.b.example", "wild"],
      ["a.example.", "a"],
      ["c.example", "c"],
      ["www.c.example", "c"],
      ["z.b.example", "z"],
      ["up.example", "up"],
      ["dup.example", "long"],
      // A wildcard covers one label: not the bare domain, not two labels.
      ["b.example", "localhost"],
      ["y.x.b.example", "localhost"],
      ["unknown.example", "localhost"],
      [undefined, "localhost"],
    ];
    for (const [name, cn] of cases) expect(await presented(name), String(name)).toBe(cn);
  });

  it("proxies a request on a connection whose certificate SNI chose, verified by the client", async () => {
    const text = await new Promise<string>((resolve, reject) => {
      const socket = connect({
        host: "127.0.0.1",
        port: port(),
        servername: "x.b.example",
        ca: readFileSync(join(certs, "wild.crt")),
      });
      let got = "";
      socket.on("secureConnect", () =>
        socket.write("GET /api/items HTTP/1.1\r\nHost: x.b.example\r\nConnection: close\r\n\r\n"),
      );
      socket.on("data", (d) => {
        got += d.toString("latin1");
      });
      socket.on("end", () => resolve(got));
      socket.on("error", reject);
    });
    expect(text.split("\r\n")[0]).toBe("HTTP/1.1 200 OK");
    expect(text).toContain(`${new URL(upstreamUrl).host} /items`);
  });

  it("reloads the directory whole, or keeps the old set when it no longer reads whole", async () => {
    selfSignedPair(join(certs, "a.crt"), join(certs, "a.key"), "DNS:a.example", "a-renewed");
    expect(await presented("a.example")).toBe("a");
    expect(stored.gateway.reloadCertificates()).toBe(true);
    expect(await presented("a.example")).toBe("a-renewed");
    // A renewal caught halfway (the key not written yet): nothing changes.
    selfSignedPair(join(certs, "a.crt"), join(dir, "elsewhere.key"), "DNS:a.example", "a-third");
    expect(stored.gateway.reloadCertificates()).toBe(false);
    expect(await presented("a.example")).toBe("a-renewed");
    expect(await presented("x.b.example")).toBe("wild");
    // Whole again: the third certificate serves.
    writeFileSync(join(certs, "a.key"), readFileSync(join(dir, "elsewhere.key")));
    expect(stored.gateway.reloadCertificates()).toBe(true);
    expect(await presented("a.example")).toBe("a-third");
  });

  it("without a default certificate, a name no certificate covers gets no handshake", async () => {
    const only = await startStoredGateway([], { certificateDir: certs });
    try {
      const onlyPort = Number(new URL(only.gateway.url).port);
      expect(only.gateway.url.startsWith("https://")).toBe(true);
      expect(await presented("c.example", onlyPort)).toBe("c");
      await expect(presented("unknown.example", onlyPort)).rejects.toThrow();
    } finally {
      await only.close();
    }
  });

  it("refuses a directory that does not read whole with config.invalid naming what is wrong", async () => {
    const bad = (name: string) => {
      const d = join(dir, `bad-${name}`);
      mkdirSync(d);
      return d;
    };
    const empty = bad("empty");
    const noKey = bad("no-key");
    selfSignedPair(join(noKey, "n.crt"), join(dir, "n-elsewhere.key"), "DNS:n.example");
    const mismatch = bad("mismatch");
    selfSignedPair(join(mismatch, "m.crt"), join(mismatch, "m.key"), "DNS:m.example");
    selfSignedPair(join(dir, "other.crt"), join(mismatch, "m.key"), "DNS:other.example");
    const garbage = bad("garbage");
    writeFileSync(join(garbage, "g.crt"), "not a certificate");
    writeFileSync(join(garbage, "g.key"), "not a key");
    const noDns = bad("no-dns");
    selfSignedPair(join(noDns, "ip.crt"), join(noDns, "ip.key"), "IP:127.0.0.1");
    const certbot = bad("certbot-no-key");
    mkdirSync(join(certbot, "d.example"));
    selfSignedPair(
      join(certbot, "d.example", "fullchain.pem"),
      join(dir, "d-elsewhere.key"),
      "DNS:d.example",
    );
    const looped = bad("symlink-loop");
    symlinkSync(join(looped, "loop"), join(looped, "loop"));
    const cases: Array<[string, RegExp]> = [
      [empty, /holds no certificate/],
      [looped, /cannot read .*loop: ELOOP/],
      [noKey, /cannot read .*n\.key: ENOENT/],
      [mismatch, /m\.crt: the key is not the certificate's/],
      [garbage, /g\.crt: not a PEM certificate/],
      [noDns, /ip\.crt: the certificate names no DNS subjectAltName/],
      [certbot, /cannot read .*privkey\.pem: ENOENT/],
      [join(dir, "missing"), /cannot read .*missing: ENOENT/],
    ];
    for (const [certificateDir, message] of cases) {
      const started = startStoredGateway([], { certificateDir });
      await expect(started, certificateDir).rejects.toMatchObject({ code: "config.invalid" });
      await expect(started, certificateDir).rejects.toThrow(message);
    }
  });

  it("a gateway without a certificate directory has nothing to reload", async () => {
    const plain = await startStoredGateway([]);
    try {
      expect(plain.gateway.url.startsWith("http://")).toBe(true);
      expect(plain.gateway.reloadCertificates()).toBe(false);
    } finally {
      await plain.close();
    }
  });
});
