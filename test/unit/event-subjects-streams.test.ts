// Subject builders and stream contracts, checked on config alone (no NATS): what a subject looks
// like, which existing stream configs are compatible, and that every incompatibility names its field.
import { RetentionPolicy, StorageType } from "@nats-io/jetstream";
import { describe, expect, it } from "vitest";
import {
  checkStream,
  checkSubjectRoot,
  domainEventsSubject,
  eventSubject,
  eventsStreamContract,
  nanos,
  streamConfig,
  subjectCovers,
  subjectToken,
} from "../../src/hub/events/index.js";

const TENANT = "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b";

describe("event subjects", () => {
  it("are <root>.<tenant>.<domain>.<type>.<id>", () => {
    expect(
      eventSubject("flotilla", {
        tenant: TENANT,
        eventType: "deployment.created",
        subjectId: "abc",
      }),
    ).toBe(`flotilla.${TENANT}.deployment.created.abc`);
  });

  it("keep five tokens when the type has more than two parts", () => {
    const s = eventSubject("flotilla", {
      tenant: TENANT,
      eventType: "service.status_changed.x",
      subjectId: "i",
    });
    expect(s.split(".")).toHaveLength(5);
    expect(s).toBe(`flotilla.${TENANT}.service.status_changed-x.i`);
  });

  it("escape separators, wildcards and whitespace in ids, reversibly", () => {
    expect(subjectToken("a.b*c>d e%")).toBe("a%2Eb%2Ac%3Ed%20e%25");
    expect(decodeURIComponent(subjectToken("a.b*c>d e%"))).toBe("a.b*c>d e%");
    expect(subjectToken("")).toBe("_");
    const s = eventSubject("flotilla", {
      tenant: TENANT,
      eventType: "config.changed",
      subjectId: "x.>",
    });
    expect(s.split(".")).toHaveLength(5);
  });

  it("domain wildcards cover exactly their domain", () => {
    const sub = eventSubject("r", {
      tenant: TENANT,
      eventType: "deployment.created",
      subjectId: "1",
    });
    expect(subjectCovers(domainEventsSubject("r", "deployment"), sub)).toBe(true);
    expect(subjectCovers(domainEventsSubject("r", "database"), sub)).toBe(false);
  });

  it("refuse a root with wildcards or empty tokens", () => {
    for (const bad of ["", "a.>", "a..b", "a b", "*", "x".repeat(65)])
      expect(() => checkSubjectRoot(bad), bad).toThrow(/subject root/);
    expect(checkSubjectRoot("flotilla.prod-1")).toBe("flotilla.prod-1");
  });
});

describe("subjectCovers", () => {
  it("follows NATS wildcard rules", () => {
    expect(subjectCovers("a.>", "a.>")).toBe(true);
    expect(subjectCovers(">", "a.>")).toBe(true);
    expect(subjectCovers("a.*", "a.>")).toBe(false);
    expect(subjectCovers("a.*.c", "a.b.c")).toBe(true);
    expect(subjectCovers("a.b", "a.>")).toBe(false);
    expect(subjectCovers("b.>", "a.>")).toBe(false);
  });
});

describe("the events stream contract", () => {
  const contract = eventsStreamContract({ name: "S", subjectRoot: "root" });
  const created = streamConfig(contract);

  it("creates a limits, file stream on <root>.> with durations in nanoseconds", () => {
    expect(created).toMatchObject({
      name: "S",
      subjects: ["root.>"],
      retention: RetentionPolicy.Limits,
      storage: StorageType.File,
      duplicate_window: nanos(5 * 60_000),
      max_age: nanos(7 * 24 * 3600_000),
    });
  });

  it("accepts what it would create, wider subjects and unlimited limits", () => {
    expect(checkStream(contract, created)).toEqual([]);
    expect(checkStream(contract, { ...created, subjects: [">"] })).toEqual([]);
    expect(checkStream(contract, { ...created, max_age: 0, max_msgs: -1, max_bytes: -1 })).toEqual(
      [],
    );
  });

  const cases: Array<[string, Record<string, unknown>]> = [
    ["subjects", { subjects: ["root.x.>"] }],
    ["retention", { retention: RetentionPolicy.Workqueue }],
    ["storage", { storage: StorageType.Memory }],
    ["sealed", { sealed: true }],
    ["max_age", { max_age: nanos(60_000) }],
    ["max_msgs", { max_msgs: 10 }],
    ["max_bytes", { max_bytes: 1024 }],
    ["duplicate_window", { duplicate_window: nanos(10_000) }],
  ];
  for (const [field, change] of cases) {
    it(`names ${field} when it breaks the contract`, () => {
      const mismatches = checkStream(contract, { ...created, ...change });
      expect(mismatches.map((m) => m.field)).toEqual([field]);
      expect(mismatches[0]!.message).toContain(field === "subjects" ? "root.>" : field);
    });
  }
});
