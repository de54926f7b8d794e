// Backup schedules' cron expressions: five UTC fields, lists, ranges, steps, macros, and the next run.
import { describe, expect, it } from "vitest";
import { nextRun, parseCron } from "../../src/hub/databases/index.js";

const next = (expr: string, after: string) =>
  nextRun(parseCron(expr), new Date(after))?.toISOString() ?? null;

describe("cron expressions", () => {
  it.each([
    ["* * * * *", "2026-01-01T00:00:30Z", "2026-01-01T00:01:00.000Z"],
    ["0 3 * * *", "2026-01-01T03:00:00Z", "2026-01-02T03:00:00.000Z"],
    ["*/15 * * * *", "2026-01-01T10:16:00Z", "2026-01-01T10:30:00.000Z"],
    ["0 0 1 * *", "2026-01-15T00:00:00Z", "2026-02-01T00:00:00.000Z"],
    ["30 2 * * 1-5", "2026-01-02T03:00:00Z", "2026-01-05T02:30:00.000Z"], // Fri -> Mon
    ["0 12 * * 7", "2026-01-01T00:00:00Z", "2026-01-04T12:00:00.000Z"], // 7 is Sunday
    ["0 0 29 2 *", "2026-03-01T00:00:00Z", "2028-02-29T00:00:00.000Z"],
    ["0 0 13 * 5", "2026-01-01T00:00:00Z", "2026-01-02T00:00:00.000Z"], // day OR weekday
    ["5,10 8-9 * * *", "2026-01-01T08:06:00Z", "2026-01-01T08:10:00.000Z"],
    ["@daily", "2026-01-01T00:00:00Z", "2026-01-02T00:00:00.000Z"],
    ["@hourly", "2026-01-01T00:59:59Z", "2026-01-01T01:00:00.000Z"],
  ])("%s after %s runs at %s", (expr, after, expected) => {
    expect(next(expr, after)).toBe(expected);
  });

  it("a date that never comes has no next run", () => {
    expect(next("0 0 31 2 *", "2026-01-01T00:00:00Z")).toBeNull();
  });

  it.each([
    "",
    "* * * *",
    "* * * * * *",
    "60 * * * *",
    "* 24 * * *",
    "* * 0 * *",
    "* * * 13 *",
    "* * * * 8",
    "5-1 * * * *",
    "*/0 * * * *",
    "a * * * *",
    "@sometimes",
  ])("%j is refused with validation.failed on the cron field", (expr) => {
    expect(() => parseCron(expr)).toThrow(
      expect.objectContaining({ code: "validation.failed", field: "cron" }),
    );
  });
});
