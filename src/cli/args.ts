/** Small helpers shared by the CLI commands: flags, id lists, where diagnostics go. */
import { parseArgs } from "node:util";

export class UsageError extends Error {
  override name = "UsageError";
}

export type Flags = Record<string, string | boolean | undefined>;

/** Parses --flag value / --flag=value / --switch; unknown flags are a UsageError naming them. */
export function parseFlags(
  argv: string[],
  strings: string[],
  booleans: string[] = [],
): Flags {
  const options: Record<string, { type: "string" | "boolean" }> = {};
  for (const s of strings) options[s] = { type: "string" };
  for (const b of booleans) options[b] = { type: "boolean" };
  try {
    return parseArgs({ args: argv, options, allowPositionals: false, strict: true })
      .values as Flags;
  } catch (e) {
    throw new UsageError((e as Error).message);
  }
}

/** "3,17,42" -> [3, 17, 42]; anything else is a UsageError. */
export function parseIds(text: string | boolean | undefined, flag = "--ids"): number[] {
  if (typeof text !== "string" || text.trim() === "") throw new UsageError(`${flag} is required`);
  return text.split(",").map((s) => {
    const n = Number(s.trim());
    if (!Number.isSafeInteger(n) || n < 0) {
      throw new UsageError(`${flag}: "${s}" is not a non-negative integer token id`);
    }
    return n;
  });
}

export function numberFlag(
  flags: Flags,
  name: string,
  fallback: number,
  check: (n: number) => boolean = Number.isFinite,
): number {
  const v = flags[name];
  if (v === undefined) return fallback;
  const n = Number(v);
  if (typeof v !== "string" || !check(n)) {
    throw new UsageError(`--${name}: "${v}" is not a valid value`);
  }
  return n;
}

/** Diagnostics go to stderr so stdout stays machine-readable. */
export function info(message: string): void {
  console.error(message);
}
