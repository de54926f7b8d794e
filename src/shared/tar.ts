// A minimal ustar writer and reader for the gateway sync archive (regular files and directories
// only): the hub writes one top-level directory per deploymentId; the gateway reads it back and
// rejects any entry that would land outside its directory.

const BLOCK = 512;

export interface TarEntry {
  path: string;
  body: Buffer;
}

function header(path: string, size: number, type: "0" | "5"): Buffer {
  const h = Buffer.alloc(BLOCK);
  if (Buffer.byteLength(path) > 100)
    throw new Error(`tar path longer than 100 bytes: ${path.slice(0, 40)}`);
  h.write(path, 0, 100, "utf8");
  h.write(type === "5" ? "0000755\0" : "0000644\0", 100, "ascii");
  h.write("0000000\0", 108, "ascii");
  h.write("0000000\0", 116, "ascii");
  h.write(`${size.toString(8).padStart(11, "0")}\0`, 124, "ascii");
  h.write(
    `${Math.floor(Date.now() / 1000)
      .toString(8)
      .padStart(11, "0")}\0`,
    136,
    "ascii",
  );
  h.write("        ", 148, "ascii");
  h.write(type, 156, "ascii");
  h.write("ustar\0", 257, "ascii");
  h.write("00", 263, "ascii");
  let sum = 0;
  for (const b of h) sum += b;
  h.write(`${sum.toString(8).padStart(6, "0")}\0 `, 148, "ascii");
  return h;
}

/** Directories are implied by file paths: each distinct top-level folder gets an entry first. */
export function writeTar(entries: TarEntry[]): Buffer {
  const parts: Buffer[] = [];
  const dirs = new Set<string>();
  for (const e of entries) {
    const dir = e.path.split("/")[0]!;
    if (e.path.includes("/") && !dirs.has(dir)) {
      dirs.add(dir);
      parts.push(header(`${dir}/`, 0, "5"));
    }
    parts.push(header(e.path, e.body.length, "0"), e.body);
    const pad = (BLOCK - (e.body.length % BLOCK)) % BLOCK;
    if (pad) parts.push(Buffer.alloc(pad));
  }
  parts.push(Buffer.alloc(BLOCK * 2));
  return Buffer.concat(parts);
}

export class UnsafeArchiveError extends Error {
  constructor(readonly entry: string) {
    super(
      `archive entry ${JSON.stringify(entry.slice(0, 120))} is outside its deployment directory`,
    );
    this.name = "UnsafeArchiveError";
  }
}

/**
 * Reads regular-file entries. Rejects the whole archive on an absolute path, a `..` segment, a
 * backslash, a link or any other type, or a file not inside a top-level directory.
 */
export function readTar(buf: Buffer): TarEntry[] {
  const out: TarEntry[] = [];
  let off = 0;
  while (off + BLOCK <= buf.length) {
    const h = buf.subarray(off, off + BLOCK);
    if (h.every((b) => b === 0)) break;
    const name = h.subarray(0, 100).toString("utf8").replace(/\0.*$/s, "");
    const prefix = h.subarray(345, 500).toString("utf8").replace(/\0.*$/s, "");
    const path = prefix ? `${prefix}/${name}` : name;
    const size = Number.parseInt(
      h.subarray(124, 136).toString("ascii").replace(/\0.*$/s, "").trim() || "0",
      8,
    );
    const type = String.fromCharCode(h[156] || 48);
    if (!Number.isFinite(size) || size < 0) throw new Error("archive header has an invalid size");
    const segments = path.split("/");
    if (
      path.startsWith("/") ||
      path.includes("\\") ||
      segments.some((s) => s === ".." || s === ".") ||
      (type !== "5" && segments.filter(Boolean).length < 2)
    )
      throw new UnsafeArchiveError(path);
    if (type !== "0" && type !== "5") throw new UnsafeArchiveError(path);
    off += BLOCK;
    if (off + size > buf.length) throw new Error("archive is truncated");
    if (type === "0") out.push({ path, body: Buffer.from(buf.subarray(off, off + size)) });
    off += Math.ceil(size / BLOCK) * BLOCK;
  }
  return out;
}
