// Input checks for identity fields; each failure names its field.
import {
  checkId,
  checkName,
  checkSlug,
  invalid,
  slugFrom as sharedSlugFrom,
} from "../../shared/index.js";

const EMAIL = /^[^\s@]+@[^\s@]+\.[^\s@]+$/;

export function email(field: string, value: string): string {
  const v = value.trim();
  if (!v) throw invalid(field, "is required");
  if (v.length > 254) throw invalid(field, "must be at most 254 characters");
  if (!EMAIL.test(v)) throw invalid(field, "must be an email address like you@example.com");
  return v;
}

export function password(field: string, value: string): string {
  if (!value) throw invalid(field, "is required");
  if (value.length < 10) throw invalid(field, "must be at least 10 characters");
  // scrypt is fed the whole password; cap it so a request cannot make hashing expensive.
  if (value.length > 256) throw invalid(field, "must be at most 256 characters");
  return value;
}

export const name = checkName;
export const slug = checkSlug;
export const id = checkId;
export const slugFrom = (text: string) => sharedSlugFrom(text, "org");
