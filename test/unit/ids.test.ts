import { describe, expect, it } from "vitest";
import { isUuid, randomIdBytes, randomIdHex, uuidv7 } from "../../src/shared/index.js";

describe("identifier generation", () => {
  it("gives n random bytes as 2n lowercase hex characters, for every size the callers use", () => {
    for (const n of [1, 8, 16, 32, 255, 256]) {
      const hex = randomIdHex(n);
      expect(hex).toMatch(new RegExp(`^[0-9a-f]{${2 * n}}$`));
    }
  });

  it("serves ids larger than its hex window whole", () => {
    expect(randomIdHex(300)).toMatch(/^[0-9a-f]{600}$/);
    expect(randomIdHex(4096)).toMatch(/^[0-9a-f]{8192}$/);
  });

  it("never hands out the same bytes twice, across window and pool refills", () => {
    // 3 ids a request as the gateway draws them (16, 16, 8 bytes): 40,000 ids cross ~150 hex
    // windows and ~100 pool refills; a reused window or offset would repeat an id.
    const seen = new Set<string>();
    for (let i = 0; i < 40_000; i++) seen.add(randomIdHex(i % 3 === 2 ? 8 : 16));
    expect(seen.size).toBe(40_000);
  });

  it("keeps the bytes it hands out: a caller's copy does not change under later draws", () => {
    const bytes = randomIdBytes(16);
    const before = bytes.toString("hex");
    for (let i = 0; i < 1_000; i++) randomIdBytes(64);
    expect(bytes.toString("hex")).toBe(before);
  });

  it("makes version 7 UUIDs that sort by their millisecond", () => {
    const a = uuidv7(1_700_000_000_000);
    const b = uuidv7(1_700_000_000_001);
    expect(isUuid(a)).toBe(true);
    expect(a[14]).toBe("7");
    expect("89ab").toContain(a[19]);
    expect(a < b).toBe(true);
  });
});
