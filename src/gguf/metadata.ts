/**
 * GGUF metadata values and typed look-ups. A value keeps the type the file gave it (gguf.h
 * `enum gguf_type`), so a file read and written again is the same: 64-bit integers are bigints,
 * FLOAT32 values are the float32 numbers stored (getFloat() gives their shortest decimal), arrays
 * hold their item type and items (which may themselves be arrays).
 */

/** GGUF value types by name, with their on-disk ids (gguf.h `enum gguf_type`). */
export const GGUF_VALUE_TYPES = {
  UINT8: 0,
  INT8: 1,
  UINT16: 2,
  INT16: 3,
  UINT32: 4,
  INT32: 5,
  FLOAT32: 6,
  BOOL: 7,
  STRING: 8,
  ARRAY: 9,
  UINT64: 10,
  INT64: 11,
  FLOAT64: 12,
} as const;

export type GgufValueType = keyof typeof GGUF_VALUE_TYPES;

/** On-disk id -> name. */
export const GGUF_VALUE_TYPE_NAMES: ReadonlyMap<number, GgufValueType> = new Map(
  Object.entries(GGUF_VALUE_TYPES).map(([k, v]) => [v, k as GgufValueType]),
);

/** Bytes of a fixed-size value type (STRING and ARRAY have none). */
export const GGUF_VALUE_BYTES: Partial<Record<GgufValueType, number>> = {
  UINT8: 1,
  INT8: 1,
  BOOL: 1,
  UINT16: 2,
  INT16: 2,
  UINT32: 4,
  INT32: 4,
  FLOAT32: 4,
  UINT64: 8,
  INT64: 8,
  FLOAT64: 8,
};

/** number for 8-32 bit integers and floats, bigint for 64-bit integers. */
export type GgufScalar = number | bigint | boolean | string;

/** An ARRAY value: every item is of itemType (an ARRAY item is itself a GgufArray). */
export interface GgufArray {
  itemType: GgufValueType;
  items: GgufValue[];
}

export type GgufValue = GgufScalar | GgufArray;

/** One metadata entry: its type and value (a GgufArray when type is ARRAY). */
export interface GgufKv {
  type: GgufValueType;
  value: GgufValue;
}

/** A file's metadata in file order. */
export type GgufMetadata = Map<string, GgufKv>;

/** Thrown when a metadata key a reader needs is missing or of the wrong type. */
export class GgufMetadataError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "GgufMetadataError";
  }
}

const INTEGER_TYPES: readonly GgufValueType[] = [
  "UINT8",
  "INT8",
  "UINT16",
  "INT16",
  "UINT32",
  "INT32",
  "UINT64",
  "INT64",
];
const FLOAT_TYPES: readonly GgufValueType[] = ["FLOAT32", "FLOAT64"];

function wrongType(source: string, key: string, kv: GgufKv, want: string): never {
  throw new GgufMetadataError(
    `${source}: metadata ${key} is ${kv.type}, not ${want}; the file was not written by ` +
      `llama.cpp's convert_hf_to_gguf.py (or is damaged): convert the model again`,
  );
}

/** An integer (any integer type) as a safe number, or undefined when the key is absent. */
export function getInt(meta: GgufMetadata, key: string, source: string): number | undefined {
  const kv = meta.get(key);
  if (kv === undefined) return undefined;
  if (!INTEGER_TYPES.includes(kv.type)) wrongType(source, key, kv, "an integer");
  const n = Number(kv.value as number | bigint);
  if (!Number.isSafeInteger(n)) {
    throw new GgufMetadataError(`${source}: metadata ${key} = ${kv.value} is too large`);
  }
  return n;
}

/**
 * A number (float or integer type), or undefined. A FLOAT32 comes back as the shortest decimal
 * that is the same float32 (1e-6, not 9.999999974752427e-7), as the value in the config.json the
 * file was converted from was.
 */
export function getFloat(meta: GgufMetadata, key: string, source: string): number | undefined {
  const kv = meta.get(key);
  if (kv === undefined) return undefined;
  if (kv.type === "FLOAT32") return shortestFloat32(kv.value as number);
  if (FLOAT_TYPES.includes(kv.type)) return kv.value as number;
  return getInt(meta, key, source) ?? wrongType(source, key, kv, "a number");
}

/** The shortest decimal that rounds to the same float32 as x. */
export function shortestFloat32(x: number): number {
  if (!Number.isFinite(x) || x === 0) return x;
  for (let digits = 1; digits <= 9; digits++) {
    const d = Number(x.toPrecision(digits));
    if (Math.fround(d) === x) return d;
  }
  return x;
}

export function getString(meta: GgufMetadata, key: string, source: string): string | undefined {
  const kv = meta.get(key);
  if (kv === undefined) return undefined;
  if (kv.type !== "STRING") wrongType(source, key, kv, "a STRING");
  return kv.value as string;
}

export function getBool(meta: GgufMetadata, key: string, source: string): boolean | undefined {
  const kv = meta.get(key);
  if (kv === undefined) return undefined;
  if (kv.type !== "BOOL") wrongType(source, key, kv, "a BOOL");
  return kv.value as boolean;
}

/** An ARRAY of STRING, or undefined. */
export function getStringArray(
  meta: GgufMetadata,
  key: string,
  source: string,
): string[] | undefined {
  const kv = meta.get(key);
  if (kv === undefined) return undefined;
  const arr = kv.value as GgufArray;
  if (kv.type !== "ARRAY" || arr.itemType !== "STRING") {
    wrongType(source, key, kv, "a STRING array");
  }
  return arr.items as string[];
}

/** An ARRAY of any integer type, as numbers, or undefined. */
export function getIntArray(
  meta: GgufMetadata,
  key: string,
  source: string,
): number[] | undefined {
  const kv = meta.get(key);
  if (kv === undefined) return undefined;
  const arr = kv.value as GgufArray;
  if (kv.type !== "ARRAY" || !INTEGER_TYPES.includes(arr.itemType)) {
    wrongType(source, key, kv, "an integer array");
  }
  return arr.items.map((v) => Number(v as number | bigint));
}

/** Like the getters above, for a key the reader cannot do without. */
export function required<T>(value: T | undefined, key: string, source: string, why: string): T {
  if (value === undefined) {
    throw new GgufMetadataError(
      `${source}: metadata ${key} is missing (${why}); convert the model again with ` +
        `llama.cpp's convert_hf_to_gguf.py`,
    );
  }
  return value;
}
