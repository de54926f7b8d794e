// The hand-written log lines (infoLineWriter, isoNow) are byte for byte what pino writes for the
// same call from a createLogger logger, in and out of a request's context.
import { Writable } from "node:stream";
import { pino } from "pino";
import { afterEach, describe, expect, it, vi } from "vitest";
import {
  createLogger,
  hundredthsText,
  infoLineWriter,
  isoNow,
  type RequestContext,
  runWithContext,
} from "../../src/shared/index.js";

function capture(level = "info") {
  const lines: string[] = [];
  const destination = new Writable({
    write(chunk, _enc, done) {
      lines.push(String(chunk));
      done();
    },
  });
  // pino writes to a destination's write() synchronously; the Writable hands each to `lines`.
  const logger = createLogger({ level, name: "lines-test", destination });
  return { logger, lines };
}

/** A line with its time replaced, to compare two lines written a moment apart. */
const timeless = (line: string) => line.replace(/"time":"[^"]*"/, '"time":"T"');

const CONTEXTS: Array<[string, RequestContext | undefined]> = [
  ["no request context", undefined],
  [
    "a full context",
    {
      tenant: "0190a000-0000-7000-8000-000000000001",
      correlationId: "corr-1",
      traceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
      requestId: "req-1",
    },
  ],
  [
    "no tenant, no request id, a trace that does not parse, characters JSON escapes",
    { correlationId: 'we"ird\\id\u0001é\ud800', traceparent: "not-a-trace" },
  ],
];

afterEach(() => {
  vi.useRealTimers();
});

describe("hand-written log lines", () => {
  for (const [name, ctx] of CONTEXTS) {
    it(`an rpc line is pino's own line for the same call, from a child logger: ${name}`, () => {
      const { logger: root, lines } = capture();
      const logger = root.child({ instance: "i-1" });
      const write = infoLineWriter(logger, "rpc");
      const both = () => {
        logger.info({ rpc: "flotilla.v1.IdentityService/WhoAmI", code: "ok", ms: 0.4 }, "rpc");
        write('"rpc":"flotilla.v1.IdentityService/WhoAmI","code":"ok","ms":0.4');
      };
      if (ctx) runWithContext(ctx, both);
      else both();
      expect(lines).toHaveLength(2);
      expect(timeless(lines[1]!)).toBe(timeless(lines[0]!));
      expect(JSON.parse(lines[1]!).time).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/);
    });
  }

  it("writes a createLogger logger's lines itself: pino's redaction does not run on them", () => {
    const { logger, lines } = capture();
    infoLineWriter(logger.child({ instance: "i-1" }), "rpc")('"password":"not-a-secret-here"');
    expect(JSON.parse(lines[0]!).password).toBe("not-a-secret-here");
  });

  it("a logger createLogger did not make gets its lines through pino itself", () => {
    const lines: string[] = [];
    const other = pino(
      { base: null, timestamp: false },
      { write: (line: string) => void lines.push(line) },
    );
    infoLineWriter(other, "rpc")('"rpc":"x","ms":1.5');
    expect(lines).toEqual(['{"level":30,"rpc":"x","ms":1.5,"msg":"rpc"}\n']);
  });

  it("writes nothing when the logger's level is above info", () => {
    const { logger, lines } = capture("warn");
    infoLineWriter(logger, "rpc")('"rpc":"x"');
    expect(lines).toEqual([]);
  });

  it("isoNow is toISOString of the current time, across second boundaries", () => {
    vi.useFakeTimers();
    for (const t of [
      0, 999, 1000, 1_700_000_000_999, 1_700_000_001_000, 2_147_483_647_000, 1_764_633_600_050,
    ]) {
      vi.setSystemTime(t);
      expect(isoNow()).toBe(new Date(t).toISOString());
    }
  });

  it("hundredthsText writes a duration rounded to hundredths as String() writes that number", () => {
    const mismatches: number[] = [];
    for (let k = 0; k <= 2_000_000; k += k < 20_000 ? 1 : 997)
      if (hundredthsText(k / 100) !== String(k / 100)) mismatches.push(k);
    expect(mismatches).toEqual([]);
    for (const ms of [0.004, 0.005, 0.994, 0.995, 1.0049, 9.999, 123.456, 86_400_000.01])
      expect(hundredthsText(ms), String(ms)).toBe(String(Math.round(ms * 100) / 100));
    // Never a recorded duration, and still what String() writes.
    for (const odd of [Number.NaN, -0.05, -3, 1e21, Number.POSITIVE_INFINITY])
      expect(hundredthsText(odd), String(odd)).toBe(String(Math.round(odd * 100) / 100));
  });
});
