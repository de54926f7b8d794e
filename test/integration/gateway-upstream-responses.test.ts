// The fast path's parser of upstream responses (UpstreamConn in src/gateway/fast-path.ts), pinned
// against a raw node:net upstream that writes scripted bytes: exact framing, header case and
// whitespace, and TCP write splits are the test's, not a library's.
import { type AddressInfo, connect, createServer, type Server, type Socket } from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { deployedRow, type StoredGateway, startStoredGateway } from "../support/gateway.js";
import { sendRaw } from "../support/http.js";

/** A request the upstream read: its target, its head, and the accepted connection it came on. */
interface UpstreamRequest {
  conn: number;
  target: string;
  head: string;
}

/** Writes the scripted answer to one request; the upstream reads the next request after it. */
type Script = (s: Socket, req: UpstreamRequest) => Promise<void> | void;

/** A string is written as latin1 bytes; a number waits that many ms (a separate TCP write). */
type Part = string | Buffer | number;

const requests: UpstreamRequest[] = [];
/** Resolves when the upstream connection with that index closes. */
const closes: Array<Promise<void>> = [];
let upstream: Server;
let stored: StoredGateway;
let port: number;

/** The gate a scripted answer waits on before its body; the test opens it. */
let gate: { opened: Promise<void>; open(): void } = newGate();

function newGate(): { opened: Promise<void>; open(): void } {
  let open = () => {};
  const opened = new Promise<void>((r) => {
    open = r;
  });
  return { opened, open };
}

function write(s: Socket, data: string | Buffer): Promise<void> {
  return new Promise((resolve, reject) =>
    s.write(typeof data === "string" ? Buffer.from(data, "latin1") : data, (err) =>
      err ? reject(err) : resolve(),
    ),
  );
}

/** Writes each part once the previous one has been handed to the kernel. */
async function respond(s: Socket, ...parts: Part[]): Promise<void> {
  for (const p of parts) {
    if (typeof p === "number") await new Promise((r) => setTimeout(r, p));
    else await write(s, p);
  }
}

/** A 200 whose body is the request target, so each answer names its request. */
const plain: Script = (s, req) =>
  respond(s, `HTTP/1.1 200 OK\r\nContent-Length: ${req.target.length}\r\n\r\n${req.target}`);

const LARGE = Buffer.alloc(200_000);
for (let i = 0; i < LARGE.length; i++) LARGE[i] = i % 251;
const HUGE = Buffer.alloc(64 * 1024 * 1024);
for (let i = 0; i < HUGE.length; i += LARGE.length) LARGE.copy(HUGE, i);
/** How many times the upstream has handed all of HUGE to its socket. */
const huge = { written: 0 };

const scripts: Record<string, Script> = {
  "/plain": plain,
  "/headers": (s) =>
    respond(
      s,
      "HTTP/1.1 200 Fine\r\n" +
        "Content-Type:text/plain\r\n" +
        "X-Pad:   padded \t\r\n" +
        "SET-COOKIE: a=1\r\n" +
        "set-cookie: b=2\r\n" +
        "Connection: X-Secret, Keep-Alive\r\n" +
        "X-Secret: hidden\r\n" +
        "Keep-Alive: timeout=30\r\n" +
        "Proxy-Authenticate: Basic\r\n" +
        "Trailer: X-Sum\r\n" +
        "Upgrade: h2c\r\n" +
        "X-Correlation-Id: upstream-corr\r\n" +
        "Traceparent: 00-11111111111111111111111111111111-2222222222222222-01\r\n" +
        "Content-Length: 5\r\n" +
        "\r\n" +
        "hello",
    ),
  // Every hop-by-hop header beside a plain keep-alive Connection (the head is made in one walk).
  "/headers-hop-by-hop": (s) =>
    respond(
      s,
      "HTTP/1.1 200 OK\r\n" +
        "Connection: keep-alive\r\n" +
        "Keep-Alive: timeout=30\r\n" +
        "Proxy-Authenticate: Basic\r\n" +
        "Proxy-Authorization: Basic c2VjcmV0\r\n" +
        "Proxy-Connection: keep-alive\r\n" +
        "TE: trailers\r\n" +
        "Trailer: X-Sum\r\n" +
        "Upgrade: h2c\r\n" +
        "Host: upstream.example\r\n" +
        "X-Kept: yes\r\n" +
        "Content-Length: 2\r\n" +
        "\r\n" +
        "ok",
    ),
  "/headers-chunked": (s) =>
    respond(
      s,
      "HTTP/1.1 200 OK\r\nTRANSFER-ENCODING: chunked\r\nX-Kept: yes\r\n\r\n4\r\nbody\r\n0\r\n\r\n",
    ),
  "/headers-dated-named": (s) =>
    respond(
      s,
      "HTTP/1.1 200 OK\r\nConnection: date\r\nDATE: Tue, 01 Jan 2030 00:00:00 GMT\r\nContent-Length: 2\r\n\r\nok",
    ),
  "/headers-dated": (s) =>
    respond(
      s,
      "HTTP/1.1 200 OK\r\nDATE: Tue, 01 Jan 2030 00:00:00 GMT\r\nContent-Length: 2\r\n\r\nok",
    ),
  "/bad-no-colon": (s) =>
    respond(s, "HTTP/1.1 200 OK\r\nNoColonHere\r\nContent-Length: 2\r\n\r\nok"),
  "/bad-name-space": (s) =>
    respond(s, "HTTP/1.1 200 OK\r\nBad Name: x\r\nContent-Length: 2\r\n\r\nok"),
  "/bad-ctl": (s) => respond(s, "HTTP/1.1 200 OK\r\nX-Ctl: a\x01b\r\nContent-Length: 2\r\n\r\nok"),
  "/bad-cl-nan": (s) => respond(s, "HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\nok"),
  "/bad-cl-twice": (s) =>
    respond(s, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok!"),
  "/bad-cl-te": (s) =>
    respond(
      s,
      "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
    ),
  // A status code where HTTP/1.x has one, after another protocol's name.
  "/bad-status-h2": (s) => respond(s, "HTTP/2.0 200 OK\r\nContent-Length: 2\r\n\r\nok"),
  "/bad-status-rtsp": (s) => respond(s, "RTSP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok"),
  "/bad-status-icy": (s) => respond(s, "ICY 200 OK\r\nContent-Length: 2\r\n\r\nok"),
  "/bad-status-exponent": (s) => respond(s, "HTTP/1.1 1e2 OK\r\nContent-Length: 2\r\n\r\nok"),
  "/bad-status-four-digits": (s) => respond(s, "HTTP/1.1 2000 OK\r\nContent-Length: 2\r\n\r\nok"),
  "/bad-ctl-at-ends": (s) =>
    respond(s, "HTTP/1.1 200 OK\r\nX-B: \x0bb\x0c\r\nContent-Length: 2\r\n\r\nok"),
  // A bare LF or CR ends the status line early: the next line must not be read as a header.
  "/bad-status-lf": (s) =>
    respond(s, "HTTP/1.1 200 OK\nContent-Length: 99\r\nContent-Length: 2\r\n\r\nok"),
  "/bad-status-cr": (s) =>
    respond(s, "HTTP/1.1 200\rContent-Length: 99\r\nContent-Length: 2\r\n\r\nok"),
  "/bad-status-version": (s) => respond(s, "HTTP/1.9 200 OK\r\nContent-Length: 2\r\n\r\nok"),
  "/bad-te-and-cl": (s) =>
    respond(s, "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nContent-Length: 2\r\n\r\nok"),
  // The head and a broken chunk in one read: the head was never sent, so the client gets a 502.
  "/bad-chunk-same-read": (s) =>
    respond(s, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nZZ\r\n"),
  // Chunk-size lines llhttp refuses: a VT before the size, a bare LF inside an extension.
  "/bad-chunk-size-vt": (s) =>
    respond(s, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\x0b2\r\nhi\r\n0\r\n\r\n"),
  "/bad-chunk-ext-lf": (s) =>
    respond(s, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2;a\nb\r\nhi\r\n0\r\n\r\n"),
  // Framing that breaks after the head left with the first bytes: the client connection is cut.
  "/bad-chunk-end": (s) =>
    respond(s, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi", 20, "XX0\r\n\r\n"),
  "/bad-trailer": (s) =>
    respond(
      s,
      "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n",
      20,
      "0\r\nX-T: a\x01b\r\n\r\n",
    ),
  "/bad-bare-lf": (s) => respond(s, "HTTP/1.1 200 OK\nContent-Length: 2\n\nok"),
  "/value-beyond-ascii": (s) =>
    respond(s, "HTTP/1.1 200 OK\r\nX-A: \tcaf\xe9\xa0 \r\nContent-Length: 2\r\n\r\nok"),
  "/connection-names-length": (s) =>
    respond(s, "HTTP/1.1 200 OK\r\nConnection: content-length\r\nContent-Length: 5\r\n\r\nhello"),
  "/ok-cl-twice": (s) =>
    respond(s, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\ncontent-length:  2\r\n\r\nok"),
  // The head made again without what Connection names still gives the length once.
  "/ok-cl-twice-connection": (s) =>
    respond(
      s,
      "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: x-gone\r\nX-Gone: 1\r\ncontent-length: 2\r\nX-Kept: 1\r\n\r\nok",
    ),
  "/early-hints": (s) =>
    respond(
      s,
      "HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n",
      20,
      "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhints",
    ),
  "/early-hints-one-write": (s) =>
    respond(
      s,
      "HTTP/1.1 100 Continue\r\n\r\n" +
        "HTTP/1.1 103 Early Hints\r\nLink: </b.css>; rel=preload\r\n\r\n" +
        "HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nhints!",
    ),
  "/split": (s) =>
    respond(
      s,
      "HTTP/1.1 200 OK\r\nContent-Ty",
      20,
      "pe: text/plain\r\nX-Split: a",
      20,
      "b\r\nContent-Length: 11\r\n\r",
      20,
      "\n",
      50,
      "hello",
      20,
      " world",
    ),
  "/gated": async (s) => {
    await respond(s, "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n");
    await gate.opened;
    await respond(s, "after-gate");
  },
  "/gated-until-close": async (s) => {
    await respond(s, "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n");
    await gate.opened;
    await respond(s, "after-gate");
    s.end();
  },
  "/large": (s) =>
    respond(
      s,
      Buffer.concat([
        Buffer.from(
          "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: 200000\r\n\r\n",
          "latin1",
        ),
        LARGE,
      ]),
    ),
  "/chunked-ext": (s) =>
    respond(
      s,
      "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n" +
        '5;name=value\r\nhello\r\n6;ext="q";other\r\n world\r\n0;last\r\nX-Sum: abc\r\nX-Other: d\r\n\r\n',
    ),
  "/chunked-split": (s) =>
    respond(
      s,
      "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;na",
      20,
      "me=v\r\nhel",
      20,
      "lo\r",
      20,
      "\n3\r\n!!!\r\n0\r\nX-T: 1\r",
      20,
      "\n\r\n",
    ),
  "/until-close-http10": async (s) => {
    await respond(s, "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nbody until close");
    s.end();
  },
  "/until-close-connection": async (s) => {
    await respond(s, "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nfirst part, ", 20, "second part");
    s.end();
  },
  // The upstream keeps these connections open: only the gateway can decide not to reuse them.
  "/overflow": (s) => respond(s, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhelloEXTRA-BYTES"),
  "/no-content-extra": (s) => respond(s, "HTTP/1.1 204 No Content\r\n\r\nEXTRA-BYTES"),
  "/no-content": (s) => respond(s, "HTTP/1.1 204 No Content\r\nX-A: 1\r\n\r\n"),
  "/not-modified": (s) =>
    respond(s, 'HTTP/1.1 304 Not Modified\r\nETag: "v1"\r\nContent-Length: 1234\r\n\r\n'),
  "/close-after": (s) =>
    respond(s, "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 4\r\n\r\nbye!"),
  "/short-keep-alive": (s) =>
    respond(s, "HTTP/1.1 200 OK\r\nKeep-Alive: timeout=1\r\nContent-Length: 2\r\n\r\nka"),
  "/http10-length": (s) => respond(s, "HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nold"),
  // 64 MB, more than the loopback's socket buffers hold between the upstream and the client.
  "/huge": async (s) => {
    await respond(s, `HTTP/1.1 200 OK\r\nContent-Length: ${HUGE.length}\r\n\r\n`, HUGE);
    huge.written++;
  },
  // A body of ?bytes=N (at most HUGE's length).
  "/sized": (s, req) => {
    const n = Number(new URLSearchParams(req.target.split("?")[1]).get("bytes"));
    return respond(s, `HTTP/1.1 200 OK\r\nContent-Length: ${n}\r\n\r\n`, HUGE.subarray(0, n));
  },
};

beforeAll(async () => {
  upstream = createServer((s) => {
    const conn = closes.length;
    closes.push(new Promise((r) => s.once("close", () => r())));
    s.setNoDelay(true);
    s.on("error", () => {});
    let buf = "";
    let busy = false;
    const next = (): void => {
      const end = buf.indexOf("\r\n\r\n");
      if (busy || end === -1) return;
      const head = buf.slice(0, end + 4);
      buf = buf.slice(end + 4);
      const target = head.slice(4, head.indexOf(" ", 4));
      const req = { conn, target, head };
      requests.push(req);
      const script = scripts[target.split("?")[0]!];
      busy = true;
      Promise.resolve()
        .then(() => (script ? script(s, req) : s.destroy()))
        .catch(() => s.destroy())
        .finally(() => {
          busy = false;
          next();
        });
    };
    s.on("data", (d: Buffer) => {
      buf += d.toString("latin1");
      next();
    });
  });
  await new Promise<void>((r) => upstream.listen(0, "127.0.0.1", () => r()));
  const up = `http://127.0.0.1:${(upstream.address() as AddressInfo).port}`;
  stored = await startStoredGateway([
    deployedRow("api-up", { contextPath: "/up", upstream: { url: up }, timeoutMs: 5000 }),
  ]);
  port = Number(new URL(stored.gateway.url).port);
});

afterAll(async () => {
  await stored?.close();
  await new Promise<void>((r) => upstream.close(() => r()));
});

/** The value of the sample `name{labels}` in the gateway's /metrics text, 0 when absent. */
async function metric(sample: string): Promise<number> {
  const text = await (await fetch(`${stored.gateway.adminUrl}/metrics`)).text();
  const line = text.split("\n").find((l) => l.startsWith(`${sample} `));
  return line ? Number(line.slice(sample.length + 1)) : 0;
}

/** A response as the client read it; `raw` is its exact bytes (latin1), `body` the decoded body. */
interface Res {
  raw: string;
  head: string;
  statusLine: string;
  status: number;
  /** Header lines as sent, in order. */
  headers: Array<[string, string]>;
  /** The bytes after the head, as sent (chunk framing included). */
  framed: string;
  body: string;
  /** Chunk-size lines, when chunked. */
  chunkLines: string[];
  /** Trailer lines after the last chunk, when chunked. */
  trailers: string[];
}

/** Parses the first complete response in `text`; undefined while it is incomplete. */
function parseResponse(text: string): { res: Res; rest: string } | undefined {
  const headEnd = text.indexOf("\r\n\r\n");
  if (headEnd === -1) return undefined;
  const lines = text.slice(0, headEnd).split("\r\n");
  const statusLine = lines[0]!;
  const status = Number(statusLine.slice(9, 12));
  const headers = lines.slice(1).map((l): [string, string] => {
    const colon = l.indexOf(":");
    if (colon === -1) throw new Error(`client got a header line without a colon: ${l}`);
    // The gateway writes "name: value": one space, nothing after the value.
    return [l.slice(0, colon), l.slice(colon + 2)];
  });
  const values = (name: string) => headers.filter(([k]) => k.toLowerCase() === name);
  let at = headEnd + 4;
  let body = "";
  const chunkLines: string[] = [];
  const trailers: string[] = [];
  if (status === 204 || status === 304) {
    // No body.
  } else if (values("transfer-encoding").some(([, v]) => /chunked/i.test(v))) {
    for (;;) {
      const eol = text.indexOf("\r\n", at);
      if (eol === -1) return undefined;
      const line = text.slice(at, eol);
      const size = Number.parseInt(line, 16);
      if (Number.isNaN(size)) throw new Error(`client got a bad chunk-size line: ${line}`);
      chunkLines.push(line);
      at = eol + 2;
      if (size === 0) {
        for (;;) {
          const end = text.indexOf("\r\n", at);
          if (end === -1) return undefined;
          const trailer = text.slice(at, end);
          at = end + 2;
          if (trailer === "") break;
          trailers.push(trailer);
        }
        break;
      }
      if (text.length < at + size + 2) return undefined;
      body += text.slice(at, at + size);
      if (text.slice(at + size, at + size + 2) !== "\r\n")
        throw new Error("client got a chunk without its CRLF");
      at += size + 2;
    }
  } else {
    const length = values("content-length")[0];
    if (!length) throw new Error(`client got a response without framing: ${text}`);
    const n = Number(length[1]);
    if (text.length < at + n) return undefined;
    body = text.slice(at, at + n);
    at += n;
  }
  const res = {
    raw: text.slice(0, at),
    head: text.slice(0, headEnd + 4),
    statusLine,
    status,
    headers,
    framed: text.slice(headEnd + 4, at),
    body,
    chunkLines,
    trailers,
  };
  return { res, rest: text.slice(at) };
}

/** Every complete response in `text`, in order. */
function parseAll(text: string): Res[] {
  const out: Res[] = [];
  let rest = text;
  for (;;) {
    const r = parseResponse(rest);
    if (!r) return out;
    out.push(r.res);
    rest = r.rest;
  }
}

function get(target: string, extra = ""): string {
  return `GET /up${target} HTTP/1.1\r\nhost: up.test\r\n${extra}\r\n`;
}

/** Sends pipelined GETs on one connection with sendRaw and resolves with their `n` responses. */
async function pipelined(targets: string[], n = targets.length): Promise<Res[]> {
  const text = await sendRaw(port, targets.map((t) => get(t)).join(""), (t) => {
    try {
      return parseAll(t).length >= n;
    } catch {
      return true;
    }
  });
  const all = parseAll(text);
  expect(all.length, text).toBe(n);
  return all;
}

/** One raw client connection to the gateway, read one response at a time. */
class RawClient {
  private text = "";
  private ended = false;
  private wake: (() => void) | undefined;
  readonly socket: Socket;

  constructor() {
    this.socket = connect(port, "127.0.0.1");
    this.socket.setEncoding("latin1");
    this.socket.on("data", (d: string) => {
      this.text += d;
      this.wake?.();
    });
    this.socket.on("error", () => {});
    this.socket.on("close", () => {
      this.ended = true;
      this.wake?.();
    });
  }

  send(target: string, extra = ""): void {
    this.socket.write(get(target, extra), "latin1");
  }

  /** What has arrived and is not yet taken, once `until` holds for it. */
  async peek(until: (text: string) => boolean): Promise<string> {
    while (!until(this.text)) {
      if (this.ended) throw new Error(`connection closed with ${JSON.stringify(this.text)}`);
      await new Promise<void>((r) => {
        this.wake = r;
      });
    }
    return this.text;
  }

  /** Takes the next complete response. */
  async response(): Promise<Res> {
    await this.peek((t) => parseResponse(t) !== undefined);
    const r = parseResponse(this.text)!;
    this.text = r.rest;
    return r.res;
  }

  /** Sends a GET and takes its response. */
  async get(target: string, extra = ""): Promise<Res> {
    this.send(target, extra);
    return this.response();
  }

  close(): void {
    this.socket.destroy();
  }
}

let tags = 0;
/** A target with a query unique to this request, to find it among the upstream's requests. */
function tagged(path: string): string {
  tags++;
  return `${path}?t=${tags}`;
}

function upstreamRequest(target: string): UpstreamRequest {
  const found = requests.filter((r) => r.target === target);
  expect(found.length, target).toBe(1);
  return found[0]!;
}

/** How many upstream connections these requests came on. */
function connectionsOf(...targets: string[]): number {
  return new Set(targets.map((t) => upstreamRequest(t).conn)).size;
}

/**
 * The header lines the gateway adds itself (its framing included), removed, so the upstream's own
 * can be compared in their order.
 */
const GATEWAY_HEADERS = new Set([
  "x-correlation-id",
  "traceparent",
  "date",
  "connection",
  "keep-alive",
  "transfer-encoding",
]);

function upstreamHeaders(res: Res): Array<[string, string]> {
  return res.headers.filter(([k]) => !GATEWAY_HEADERS.has(k));
}

function header(res: Res, name: string): string[] {
  return res.headers.filter(([k]) => k === name).map(([, v]) => v);
}

const HTTP_DATE = /^[A-Z][a-z]{2}, \d{2} [A-Z][a-z]{2} \d{4} \d{2}:\d{2}:\d{2} GMT$/;

describe("gateway fast path: upstream responses", () => {
  it("passes upstream headers lowercased and trimmed, with the gateway's context, date and keep-alive, and without hop-by-hop ones", async () => {
    const client = new RawClient();
    try {
      const target = tagged("/headers");
      const res = await client.get(target, "x-correlation-id: client-corr-1\r\n");
      const up = upstreamRequest(target);
      const sentTraceparent = /\r\ntraceparent: (\S+)\r\n/.exec(up.head)?.[1];
      expect(up.head).toContain("\r\nx-correlation-id: client-corr-1\r\n");
      expect(sentTraceparent).toMatch(/^00-[0-9a-f]{32}-[0-9a-f]{16}-01$/);

      // The upstream's reason phrase is not kept; the status code is.
      expect(res.statusLine).toBe("HTTP/1.1 200 OK");
      expect(upstreamHeaders(res)).toEqual([
        ["content-type", "text/plain"],
        ["x-pad", "padded"],
        ["set-cookie", "a=1"],
        ["set-cookie", "b=2"],
        ["content-length", "5"],
      ]);
      // Values exactly as written, no whitespace left around them.
      expect(res.head).toContain("\r\ncontent-type: text/plain\r\n");
      expect(res.head).toContain("\r\nx-pad: padded\r\n");
      expect(header(res, "x-correlation-id")).toEqual(["client-corr-1"]);
      expect(header(res, "traceparent")).toEqual([sentTraceparent]);
      expect(header(res, "date")).toHaveLength(1);
      expect(header(res, "date")[0]).toMatch(HTTP_DATE);
      expect(header(res, "connection")).toEqual(["keep-alive"]);
      expect(header(res, "keep-alive")).toHaveLength(1);
      expect(header(res, "keep-alive")[0]).toMatch(/^timeout=\d+$/);
      expect(res.headers.map(([k]) => k).sort()).toEqual(
        [
          "connection",
          "content-length",
          "content-type",
          "date",
          "keep-alive",
          "set-cookie",
          "set-cookie",
          "traceparent",
          "x-correlation-id",
          "x-pad",
        ].sort(),
      );
      const lower = res.head.toLowerCase();
      for (const gone of ["x-secret", "hidden", "proxy-authenticate", "trailer", "upgrade", "h2c"])
        expect(lower, gone).not.toContain(gone);
      expect(lower).not.toContain("upstream-corr");
      expect(lower).not.toContain("1111111111111111");
      expect(lower).not.toContain("timeout=30");
      expect(res.body).toBe("hello");

      // Every hop-by-hop header is dropped when Connection names none (the one-walk head).
      const hop = await client.get(tagged("/headers-hop-by-hop"));
      expect(upstreamHeaders(hop)).toEqual([
        ["x-kept", "yes"],
        ["content-length", "2"],
      ]);
      expect(hop.head.toLowerCase()).not.toMatch(
        /proxy-|\r\nte:|trailer|upgrade|upstream\.example/,
      );
      expect(hop.body).toBe("ok");

      // A chunked upstream: its Transfer-Encoding is replaced by the gateway's own, once.
      const chunked = await client.get(tagged("/headers-chunked"));
      expect(upstreamHeaders(chunked)).toEqual([["x-kept", "yes"]]);
      expect(header(chunked, "transfer-encoding")).toEqual(["chunked"]);
      expect(chunked.head).not.toContain("TRANSFER-ENCODING");
      expect(chunked.body).toBe("body");

      // An upstream's Date is kept, and none is added beside it.
      const dated = await client.get(tagged("/headers-dated"));
      expect(header(dated, "date")).toEqual(["Tue, 01 Jan 2030 00:00:00 GMT"]);
      expect(dated.body).toBe("ok");
      // One its Connection names is dropped, and the gateway's own is sent instead.
      const named = await client.get(tagged("/headers-dated-named"));
      const dates = header(named, "date");
      expect(dates).toHaveLength(1);
      expect(Math.abs(Date.parse(dates[0]!) - Date.now())).toBeLessThan(60_000);
      expect(named.body).toBe("ok");
    } finally {
      client.close();
    }
  });

  it("answers 502 upstream.unavailable to a malformed upstream head and serves the next request on the connection", async () => {
    const bad = [
      "/bad-no-colon",
      "/bad-name-space",
      "/bad-ctl",
      "/bad-cl-nan",
      "/bad-cl-twice",
      "/bad-cl-te",
      "/bad-status-h2",
      "/bad-status-rtsp",
      "/bad-status-icy",
      "/bad-status-exponent",
      "/bad-status-four-digits",
      "/bad-ctl-at-ends",
      "/bad-bare-lf",
      "/bad-status-lf",
      "/bad-status-cr",
      "/bad-status-version",
      "/bad-te-and-cl",
      "/bad-chunk-same-read",
      "/bad-chunk-size-vt",
      "/bad-chunk-ext-lf",
    ];
    for (const path of bad) {
      const after = tagged("/plain");
      const [failed, next] = await pipelined([tagged(path), after]);
      expect(failed!.statusLine, path).toBe("HTTP/1.1 502 Bad Gateway");
      expect((JSON.parse(failed!.body) as { code: string }).code, path).toBe(
        "upstream.unavailable",
      );
      // Nothing of the upstream's answer reaches the client.
      expect(upstreamHeaders(failed!).sort(), path).toEqual([
        ["content-length", String(failed!.body.length)],
        ["content-type", "application/json"],
      ]);
      expect(next!.statusLine, path).toBe("HTTP/1.1 200 OK");
      expect(next!.body, path).toBe(after);
    }
    // The same Content-Length twice is one length.
    const [same] = await pipelined([tagged("/ok-cl-twice")]);
    expect(same!.statusLine).toBe("HTTP/1.1 200 OK");
    expect(header(same!, "content-length")).toEqual(["2"]);
    expect(same!.body).toBe("ok");
    const [named] = await pipelined([tagged("/ok-cl-twice-connection")]);
    expect(header(named!, "content-length")).toEqual(["2"]);
    expect(header(named!, "x-gone")).toEqual([]);
    expect(header(named!, "x-kept")).toEqual(["1"]);
    expect(named!.body).toBe("ok");
  });

  it("trims only spaces and tabs around a value and keeps its bytes beyond ASCII", async () => {
    const [res] = await pipelined([tagged("/value-beyond-ascii")]);
    expect(res!.statusLine).toBe("HTTP/1.1 200 OK");
    expect(header(res!, "x-a")).toEqual(["caf\xe9\xa0"]);
  });

  it("keeps Content-Length when the upstream's Connection names it, so the next response stays apart", async () => {
    const after = tagged("/plain");
    const [named, next] = await pipelined([tagged("/connection-names-length"), after]);
    expect(header(named!, "content-length")).toEqual(["5"]);
    expect(named!.body).toBe("hello");
    expect(next!.body).toBe(after);
  });

  it("writes a response without body bytes before the next pipelined answer", async () => {
    const text = await sendRaw(
      port,
      `${get(tagged("/no-content"))}GET /nowhere HTTP/1.1\r\nhost: up.test\r\n\r\n`,
      (t) => t.includes("route.not_found"),
    );
    expect(parseAll(text).map((r) => r.status)).toEqual([204, 404]);
  });

  it("sends pipelined requests on the upstream connection the previous one freed", async () => {
    const targets = [tagged("/plain"), tagged("/plain"), tagged("/plain"), tagged("/plain")];
    const answers = await pipelined(targets);
    expect(answers.map((a) => a.body)).toEqual(targets);
    expect(connectionsOf(...targets)).toBe(1);
  });

  it("skips 1xx informational responses (103 Early Hints) and forwards the final response", async () => {
    const after = tagged("/plain");
    const [hinted, oneWrite, next] = await pipelined([
      tagged("/early-hints"),
      tagged("/early-hints-one-write"),
      after,
    ]);
    expect(hinted!.statusLine).toBe("HTTP/1.1 200 OK");
    expect(upstreamHeaders(hinted!)).toEqual([["content-length", "5"]]);
    expect(hinted!.body).toBe("hints");
    expect(oneWrite!.statusLine).toBe("HTTP/1.1 200 OK");
    expect(upstreamHeaders(oneWrite!)).toEqual([["content-length", "6"]]);
    expect(oneWrite!.body).toBe("hints!");
    for (const r of [hinted!, oneWrite!]) {
      expect(r.raw).not.toMatch(/HTTP\/1\.1 1\d\d|Continue|Early Hints|link:|\.css/i);
    }
    expect(next!.body).toBe(after);
  });

  it("reassembles a response head and body split across TCP writes", async () => {
    const client = new RawClient();
    try {
      const res = await client.get(tagged("/split"));
      expect(res.statusLine).toBe("HTTP/1.1 200 OK");
      expect(upstreamHeaders(res)).toEqual([
        ["content-type", "text/plain"],
        ["x-split", "ab"],
        ["content-length", "11"],
      ]);
      expect(res.framed).toBe("hello world");
      expect(res.body).toBe("hello world");
      const after = tagged("/plain");
      expect((await client.get(after)).body).toBe(after);
    } finally {
      client.close();
    }
  });

  it("sends the response head to the client before the upstream sends the body", async () => {
    for (const path of ["/gated", "/gated-until-close"]) {
      gate = newGate();
      const client = new RawClient();
      try {
        client.send(tagged(path));
        // Hangs (and the test times out) if the head waits for the body.
        const seen = await client.peek((t) => t.includes("\r\n\r\n"));
        expect(seen.slice(seen.indexOf("\r\n\r\n") + 4), path).toBe("");
        expect(seen, path).toMatch(/^HTTP\/1\.1 200 OK\r\n/);
        gate.open();
        const res = await client.response();
        expect(res.body, path).toBe("after-gate");
      } finally {
        gate.open();
        client.close();
      }
    }
  });

  it("forwards a 200,000-byte Content-Length body intact", async () => {
    const after = tagged("/plain");
    const [large, next] = await pipelined([tagged("/large"), after]);
    expect(large!.statusLine).toBe("HTTP/1.1 200 OK");
    expect(upstreamHeaders(large!)).toEqual([
      ["content-type", "application/octet-stream"],
      ["content-length", "200000"],
    ]);
    const body = Buffer.from(large!.framed, "latin1");
    expect(body.length).toBe(200_000);
    expect(body.equals(LARGE)).toBe(true);
    expect(next!.body).toBe(after);
  });

  it("stops reading the upstream while the client does not read, and then forwards every byte", async () => {
    // Two at once: their upstream connections read into the same buffer, so a body chunk still
    // waiting to reach one client must not be the other's next read.
    const sockets = [connect(port, "127.0.0.1"), connect(port, "127.0.0.1")];
    try {
      const writtenBefore = huge.written;
      for (const socket of sockets) {
        socket.pause();
        socket.write(`GET /up${tagged("/huge")} HTTP/1.1\r\nHost: localhost\r\n\r\n`);
      }
      await new Promise((r) => setTimeout(r, 500));
      // Had the gateway kept reading into its own memory, 64 MB on loopback is written in far less.
      expect(huge.written).toBe(writtenBefore);
      const received = sockets.map(
        (socket) =>
          new Promise<Buffer>((resolve) => {
            const chunks: Buffer[] = [];
            let bytes = 0;
            socket.on("data", (d: Buffer) => {
              chunks.push(d);
              bytes += d.length;
              if (bytes >= HUGE.length) setTimeout(() => resolve(Buffer.concat(chunks)), 50);
            });
            socket.resume();
          }),
      );
      for (const all of await Promise.all(received)) {
        const start = all.indexOf("\r\n\r\n") + 4;
        expect(all.subarray(0, start).toString("latin1")).toMatch(
          new RegExp(`^HTTP/1\\.1 200 OK\r\n[^]*content-length: ${HUGE.length}\r\n`),
        );
        expect(all.length - start).toBe(HUGE.length);
        expect(all.subarray(start).equals(HUGE)).toBe(true);
      }
      expect(huge.written).toBe(writtenBefore + 2);
    } finally {
      for (const socket of sockets) socket.destroy();
    }
  });

  it("never leaves an upstream connection paused once its response is done, though the client never reads", async () => {
    // A client that reads nothing fills its socket buffers (a few MB on loopback), and the read
    // that fills them pauses the upstream. When that same read also ends the response, the
    // connection goes back to the pool, and the next request, any client's, takes it (the idle
    // pool is LIFO). That read ends the largest response such a client gets whole, so that size
    // is found (the buffers are the kernel's), and the sizes around it are tried.
    const served = 'flotilla_gateway_requests_total{api="api-up",status="2xx"}';
    const reader = new RawClient();
    /** Sends `bytes` to a client that reads nothing; true when its response was read whole. */
    const probe = async (bytes: number): Promise<boolean> => {
      const before = await metric(served);
      const stalled = connect(port, "127.0.0.1");
      stalled.on("error", () => {});
      stalled.pause();
      stalled.write(
        `GET /up${tagged("/sized")}&bytes=${bytes} HTTP/1.1\r\nHost: localhost\r\n\r\n`,
      );
      // Read whole: counted within moments (a few MB on loopback). Waited for up to 250 ms, so
      // a busy machine does not make a whole response look cut short.
      let whole = false;
      for (let waited = 0; !whole && waited < 250; waited += 25) {
        await new Promise((r) => setTimeout(r, 25));
        whole = (await metric(served)) > before;
      }
      const next = tagged("/plain");
      const answered = await Promise.race([
        reader.get(next).then((res) => res.body === next),
        new Promise<false>((r) => setTimeout(() => r(false), 1000)),
      ]);
      stalled.destroy();
      expect(answered, `after a ${bytes}-byte response to a client that reads nothing`).toBe(true);
      return whole;
    };
    try {
      let low = 64 * 1024; // read whole
      let high = 32 * 1024 * 1024; // not
      expect(await probe(low)).toBe(true);
      expect(await probe(high)).toBe(false);
      while (high - low > 4096) {
        const mid = Math.floor((low + high) / 2);
        if (await probe(mid)) low = mid;
        else high = mid;
      }
      for (let bytes = low - 64 * 1024; bytes <= low + 16 * 1024; bytes += 2048) await probe(bytes);
    } finally {
      reader.close();
    }
  }, 60_000);

  it("re-frames a chunked body with extensions and trailers as plain chunks, without the trailers", async () => {
    const client = new RawClient();
    try {
      const first = tagged("/chunked-ext");
      const res = await client.get(first);
      expect(res.statusLine).toBe("HTTP/1.1 200 OK");
      expect(upstreamHeaders(res)).toEqual([]);
      expect(header(res, "transfer-encoding")).toEqual(["chunked"]);
      expect(res.body).toBe("hello world");
      expect(res.chunkLines.at(-1)).toBe("0");
      for (const line of res.chunkLines) expect(line).toMatch(/^[0-9a-f]+$/);
      expect(res.trailers).toEqual([]);
      expect(res.raw.endsWith("\r\n0\r\n\r\n")).toBe(true);
      expect(res.raw.toLowerCase()).not.toMatch(/x-sum|x-other|name=value|ext=|last/);

      const second = tagged("/chunked-split");
      const split = await client.get(second);
      expect(split.body).toBe("hello!!!");
      expect(split.trailers).toEqual([]);
      expect(split.raw).not.toContain("X-T");

      // Both ended where their last chunk said: the upstream connection is reused.
      const after = tagged("/plain");
      expect((await client.get(after)).body).toBe(after);
      expect(connectionsOf(first, second, after)).toBe(1);
    } finally {
      client.close();
    }
  });

  it("re-frames a body read until the upstream closes as chunked, and serves the next request on a new upstream connection", async () => {
    const client = new RawClient();
    try {
      for (const [path, body] of [
        ["/until-close-http10", "body until close"],
        ["/until-close-connection", "first part, second part"],
      ] as const) {
        const target = tagged(path);
        const res = await client.get(target);
        expect(res.statusLine, path).toBe("HTTP/1.1 200 OK");
        expect(header(res, "transfer-encoding"), path).toEqual(["chunked"]);
        expect(header(res, "content-length"), path).toEqual([]);
        expect(header(res, "connection"), path).toEqual(["keep-alive"]);
        expect(res.body, path).toBe(body);
        expect(res.trailers, path).toEqual([]);
        const after = tagged("/plain");
        const next = await client.get(after);
        expect(next.body, path).toBe(after);
        expect(connectionsOf(target, after), path).toBe(2);
      }
    } finally {
      client.close();
    }
  });

  it("forwards exactly Content-Length bytes of an upstream that sends more, and does not reuse that upstream connection", async () => {
    const client = new RawClient();
    try {
      const target = tagged("/overflow");
      const res = await client.get(target);
      expect(upstreamHeaders(res)).toEqual([["content-length", "5"]]);
      expect(res.framed).toBe("hello");
      const after = tagged("/plain");
      const next = await client.get(after);
      expect(next.raw).toMatch(/^HTTP\/1\.1 200 OK\r\n/);
      expect(next.body).toBe(after);
      expect(connectionsOf(target, after)).toBe(2);
      // The gateway closed it (the upstream never does).
      await closes[upstreamRequest(target).conn];
      // Nothing else arrived on the client connection.
      expect(await client.peek(() => true)).toBe("");
    } finally {
      client.close();
    }
  });

  it("cuts the client and the upstream connection when a chunk's CRLF or a trailer line is wrong", async () => {
    for (const path of ["/bad-chunk-end", "/bad-trailer"]) {
      const target = tagged(path);
      const client = new RawClient();
      try {
        client.send(target);
        // The head and the first chunk left; then the connection ends without the last chunk.
        const text = await client.peek(() => false).catch((err: Error) => err.message);
        expect(text, path).toMatch(/^connection closed with "HTTP\/1\.1 200 OK\\r\\n/);
        expect(text, path).toContain("2\\r\\nhi\\r\\n");
        expect(text, path).not.toContain("0\\r\\n\\r\\n");
        // The gateway closed the upstream connection (the upstream never does).
        await closes[upstreamRequest(target).conn];
      } finally {
        client.close();
      }
    }
  });

  it("does not reuse an upstream connection that sent bytes after a 204", async () => {
    const client = new RawClient();
    try {
      const target = tagged("/no-content-extra");
      const res = await client.get(target);
      expect(res.raw).toBe(res.head);
      expect(res.statusLine).toBe("HTTP/1.1 204 No Content");
      const after = tagged("/plain");
      expect((await client.get(after)).body).toBe(after);
      expect(connectionsOf(target, after)).toBe(2);
      await closes[upstreamRequest(target).conn];
    } finally {
      client.close();
    }
  });

  it("passes a 204 and a 304 without bodies and serves the next request on the same connections", async () => {
    const client = new RawClient();
    try {
      const first = tagged("/no-content");
      const noContent = await client.get(first);
      expect(noContent.statusLine).toBe("HTTP/1.1 204 No Content");
      expect(upstreamHeaders(noContent)).toEqual([["x-a", "1"]]);
      expect(header(noContent, "transfer-encoding")).toEqual([]);
      expect(noContent.raw).toBe(noContent.head);

      const second = tagged("/not-modified");
      const notModified = await client.get(second);
      expect(notModified.statusLine).toBe("HTTP/1.1 304 Not Modified");
      // A 304's Content-Length describes the representation, not a body: it is passed as is.
      expect(upstreamHeaders(notModified)).toEqual([
        ["etag", '"v1"'],
        ["content-length", "1234"],
      ]);
      expect(header(notModified, "transfer-encoding")).toEqual([]);
      expect(notModified.raw).toBe(notModified.head);

      const after = tagged("/plain");
      const next = await client.get(after);
      expect(next.raw).toMatch(/^HTTP\/1\.1 200 OK\r\n/);
      expect(next.body).toBe(after);
      expect(connectionsOf(first, second, after)).toBe(1);
    } finally {
      client.close();
    }
  });

  it("keeps an upstream connection for the next request unless the upstream's head says not to", async () => {
    const client = new RawClient();
    try {
      const a = tagged("/plain");
      const b = tagged("/plain");
      expect((await client.get(a)).body).toBe(a);
      expect((await client.get(b)).body).toBe(b);
      expect(connectionsOf(a, b)).toBe(1);

      for (const [path, body] of [
        ["/close-after", "bye!"],
        ["/short-keep-alive", "ka"],
        ["/http10-length", "old"],
      ] as const) {
        const target = tagged(path);
        const res = await client.get(target);
        expect(res.statusLine, path).toBe("HTTP/1.1 200 OK");
        expect(res.body, path).toBe(body);
        expect(header(res, "connection"), path).toEqual(["keep-alive"]);
        const after = tagged("/plain");
        expect((await client.get(after)).body, path).toBe(after);
        expect(connectionsOf(target, after), path).toBe(2);
        await closes[upstreamRequest(target).conn];
      }
    } finally {
      client.close();
    }
  });
});
