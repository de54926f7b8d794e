// The fleet view's own rules, with a fake prober (a stand-in for agents, named as such): probes
// never exceed the concurrency limit, concurrent requests share one probe round, the cache and
// the refresh floor hold, and a probe that throws is reported unreachable, not an error.
import { describe, expect, it } from "vitest";
import { type FleetProber, FleetService, type FleetTarget } from "../../src/hub/fleet/index.js";

function fakeProber(members: number, opts: { failId?: string } = {}) {
  let running = 0;
  const stats = { maxRunning: 0, probes: 0 };
  const prober: FleetProber = {
    kind: "agent",
    async list(): Promise<FleetTarget[]> {
      return Array.from({ length: members }, (_, i) => ({
        kind: "agent",
        id: `m${i}`,
        name: `member-${i}`,
        lastHeartbeat: null,
      }));
    },
    async probe(t) {
      running++;
      stats.probes++;
      stats.maxRunning = Math.max(stats.maxRunning, running);
      await new Promise((r) => setTimeout(r, 5));
      running--;
      if (t.id === opts.failId) throw new Error("connection refused");
      return { health: "ok", probe: "channel" };
    },
  };
  return { prober, stats };
}

describe("fleet service", () => {
  it("never runs more probes at once than its limit", async () => {
    const { prober, stats } = fakeProber(50);
    const fleet = new FleetService([prober], { concurrency: 4 });
    const r = await fleet.status("org", [], true);
    expect(r.members).toHaveLength(50);
    expect(stats.probes).toBe(50);
    expect(stats.maxRunning).toBe(4);
  });

  it("shares one probe round among concurrent requests and caches it", async () => {
    const { prober, stats } = fakeProber(10);
    const fleet = new FleetService([prober], { ttlMs: 60_000 });
    const answers = await Promise.all(
      Array.from({ length: 30 }, () => fleet.status("org", [], true)),
    );
    expect(stats.probes).toBe(10);
    expect(answers.filter((a) => !a.cached)).toHaveLength(1);
    expect((await fleet.status("org", ["agent"], false)).cached).toBe(true);
    expect(stats.probes).toBe(10);
  });

  it("probes again on refresh once the last round is older than the refresh floor", async () => {
    const { prober, stats } = fakeProber(3);
    const fleet = new FleetService([prober], { ttlMs: 60_000, minRefreshMs: 0 });
    await fleet.status("org", [], false);
    await new Promise((r) => setTimeout(r, 2));
    expect((await fleet.status("org", [], true)).cached).toBe(false);
    expect(stats.probes).toBe(6);
  });

  it("keeps organizations apart in the cache", async () => {
    const { prober, stats } = fakeProber(2);
    const fleet = new FleetService([prober], { ttlMs: 60_000 });
    await fleet.status("org-a", [], false);
    expect((await fleet.status("org-b", [], false)).cached).toBe(false);
    expect(stats.probes).toBe(4);
  });

  it("reports a probe that throws as unreachable with its reason", async () => {
    const { prober } = fakeProber(3, { failId: "m1" });
    const r = await new FleetService([prober]).status("org", [], true);
    expect(r.members.find((m) => m.id === "m1")).toMatchObject({
      health: "unreachable",
      detail: "connection refused",
    });
    expect(r.members.filter((m) => m.health === "ok")).toHaveLength(2);
  });

  it("refuses kinds it has no prober for, naming the field", async () => {
    const fleet = new FleetService([fakeProber(1).prober]);
    await expect(fleet.status("org", ["gateway"], false)).rejects.toMatchObject({
      code: "validation.failed",
      field: "kinds[0]",
    });
  });
});
