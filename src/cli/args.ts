/**
 * Small helpers shared by the CLI commands: each command's flag table (which also makes its
 * `--help`), strict number and id-list parsing, where diagnostics go.
 */
import { parseArgs } from "node:util";

export class UsageError extends Error {
  override name = "UsageError";
}

/** `--help` (or `-h`) was given: main.ts prints `text` to stdout and exits 0. */
export class HelpRequested extends Error {
  override name = "HelpRequested";
  constructor(readonly text: string) {
    super(text);
  }
}

export type Flags = Record<string, string | boolean | string[] | undefined>;

/** One flag of a command: `--name ARG` (a string) or `--name` (a switch), and what it does. */
export interface FlagSpec {
  name: string;
  /** Placeholder of the value (`N`, `DIR`, ...); absent for a switch. */
  arg?: string;
  help: string;
  /** May be given several times (its value is then a string[]). */
  repeatable?: boolean;
}

/** A command's usage line, its flags and a one-line summary. */
export interface CommandSpec {
  name: string;
  summary: string;
  /** Flags and operands after `main.ts NAME`, e.g. "[--model DIR] --ids 3,17,42". */
  usage: string;
  flags: FlagSpec[];
}

/** The `--help` text of a command: usage, summary, then every flag with its help. */
export function helpText(spec: CommandSpec): string {
  const rows = spec.flags.map((f) => [
    `--${f.name}${f.arg ? ` ${f.arg}` : ""}`,
    f.help + (f.repeatable ? " (repeatable)" : ""),
  ]);
  const width = Math.max(0, ...rows.map(([left]) => left.length));
  return `usage: main.ts ${spec.name} ${spec.usage}\n${spec.summary}\n\nflags:\n` +
    rows.map(([left, help]) => `  ${left.padEnd(width)}  ${help}`).join("\n") +
    `\n  ${"--help".padEnd(width)}  this text`;
}

/**
 * Parses --flag value / --flag=value / --switch against the command's table; unknown flags and
 * positionals are a UsageError naming them, `--help` / `-h` throws HelpRequested. The older form
 * `parseFlags(argv, stringFlags, booleanFlags)` still works (its help lists the flag names).
 */
export function parseFlags(
  argv: string[],
  spec: CommandSpec | string[],
  booleans: string[] = [],
): Flags {
  const command: CommandSpec = Array.isArray(spec)
    ? {
      name: "COMMAND",
      summary: "",
      usage: "[flags]",
      flags: [
        ...spec.map((name) => ({ name, arg: "VALUE", help: "" })),
        ...booleans.map((name) => ({ name, help: "" })),
      ],
    }
    : spec;
  if (argv.some((a) => a === "--help" || a === "-h")) throw new HelpRequested(helpText(command));
  const options: Record<string, { type: "string" | "boolean"; multiple?: boolean }> = {};
  for (const f of command.flags) {
    options[f.name] = { type: f.arg ? "string" : "boolean", multiple: !!f.repeatable };
  }
  try {
    return parseArgs({ args: argv, options, allowPositionals: false, strict: true })
      .values as Flags;
  } catch (e) {
    throw new UsageError((e as Error).message);
  }
}

/** Decimal digits only: no sign, no hex (0x10), no exponent, no Infinity, no blanks. */
const DECIMAL_INTEGER = /^[0-9]+$/;
/** A signed decimal number (1, -2, 0.5, .5, 1e-3); never Infinity, NaN, hex or blank. */
const DECIMAL_NUMBER = /^[-+]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][-+]?[0-9]+)?$/;

/** "3,17,42" -> [3, 17, 42]; an empty item ("3,,4"), a sign, hex or anything else is refused. */
export function parseIds(text: Flags[string], flag = "--ids"): number[] {
  if (typeof text !== "string" || text.trim() === "") throw new UsageError(`${flag} is required`);
  return text.split(",").map((s) => {
    const item = s.trim();
    const n = Number(item);
    if (!DECIMAL_INTEGER.test(item) || !Number.isSafeInteger(n)) {
      throw new UsageError(
        `${flag}: "${s}" is not a non-negative integer token id (decimal digits, comma-separated)`,
      );
    }
    return n;
  });
}

/** Value of a number flag (decimal, finite) passing `check`, or `fallback` when absent. */
export function numberFlag(
  flags: Flags,
  name: string,
  fallback: number,
  check: (n: number) => boolean = () => true,
): number {
  const v = flags[name];
  if (v === undefined) return fallback;
  const n = typeof v === "string" && DECIMAL_NUMBER.test(v.trim()) ? Number(v) : NaN;
  if (!Number.isFinite(n) || !check(n)) {
    throw new UsageError(`--${name}: "${v}" is not a valid value`);
  }
  return n;
}

/** Value of an integer flag (decimal digits, optional minus sign) in [min, max]. */
export function intFlag(
  flags: Flags,
  name: string,
  fallback: number,
  min: number,
  max = Number.MAX_SAFE_INTEGER,
): number {
  const v = flags[name];
  if (v === undefined) return fallback;
  const text = typeof v === "string" ? v.trim() : "";
  const n = /^-?[0-9]+$/.test(text) ? Number(text) : NaN;
  if (!Number.isSafeInteger(n) || n < min || n > max) {
    const range = max === Number.MAX_SAFE_INTEGER ? `>= ${min}` : `in ${min}..${max}`;
    throw new UsageError(`--${name}: "${v}" is not an integer ${range}`);
  }
  return n;
}

/** Diagnostics go to stderr so stdout stays machine-readable. */
export function info(message: string): void {
  console.error(message);
}
