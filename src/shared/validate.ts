// Shared field checks: each failure is a validation.failed error naming its field.
import { invalid } from "./errors.js";

// Control characters (C0, DEL, C1) have no place in names shown in tables and logs.
export function hasControlCharacter(text: string): boolean {
  for (const ch of text) {
    const c = ch.codePointAt(0)!;
    if (c < 0x20 || (c >= 0x7f && c <= 0x9f)) return true;
  }
  return false;
}

export function checkName(
  field: string,
  value: string,
  { required = true, max = 100 } = {},
): string {
  const v = value.trim();
  if (!v && required) throw invalid(field, "is required");
  if (v.length > max) throw invalid(field, `must be at most ${max} characters`);
  if (hasControlCharacter(v)) throw invalid(field, "must not contain control characters");
  return v;
}

const SLUG = /^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?$/;

export function checkSlug(field: string, value: string): string {
  if (!SLUG.test(value)) {
    throw invalid(
      field,
      `"${value.slice(0, 60)}" is not a valid slug: use 1-40 lowercase letters, digits or dashes, starting and ending with a letter or digit`,
    );
  }
  return value;
}

export function slugFrom(text: string, fallback = "item"): string {
  const s = text
    .normalize("NFKD")
    .toLowerCase()
    .replace(/[^a-z0-9]+/g, "-")
    .replace(/^-+|-+$/g, "")
    .slice(0, 40)
    .replace(/-+$/g, "");
  return s || fallback;
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

export function checkId(field: string, value: string): string {
  if (!value) throw invalid(field, "is required");
  if (!UUID.test(value)) throw invalid(field, "must be a UUID");
  return value.toLowerCase();
}

export function isUniqueViolation(err: unknown): boolean {
  return (err as { code?: string })?.code === "23505";
}
