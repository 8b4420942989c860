/**
 * GGML tensor element types as a GGUF tensor info stores them (ggml.h `enum ggml_type`): the ones
 * this runtime reads, with their block geometry, and the names of the others for error messages.
 * A row (ne[0] values, the innermost dimension) is a whole number of blocks.
 */

import { QUANT_FORMATS, QUANT_TYPES } from "../quant/formats.ts";
import type { DType } from "../types.ts";

/** One readable GGML type: `blockElems` values stored in `blockBytes` bytes. */
export interface GgmlType {
  id: number;
  dtype: DType;
  blockElems: number;
  blockBytes: number;
}

/** Float types (one value per "block"). ids from ggml.h. */
const FLOAT_TYPES: GgmlType[] = [
  { id: 0, dtype: "F32", blockElems: 1, blockBytes: 4 },
  { id: 1, dtype: "F16", blockElems: 1, blockBytes: 2 },
  { id: 30, dtype: "BF16", blockElems: 1, blockBytes: 2 },
];

/** Every GGML type the runtime reads, by id: floats plus src/quant/formats.ts. */
export const GGML_TYPES: ReadonlyMap<number, GgmlType> = new Map(
  [
    ...FLOAT_TYPES,
    ...QUANT_TYPES.map((t): GgmlType => ({
      id: QUANT_FORMATS[t].ggmlType,
      dtype: t,
      blockElems: QUANT_FORMATS[t].elems,
      blockBytes: QUANT_FORMATS[t].bytes,
    })),
  ].map((t) => [t.id, t]),
);

/** The GGML id of a readable dtype. */
export function ggmlTypeId(dtype: DType): number {
  for (const t of GGML_TYPES.values()) if (t.dtype === dtype) return t.id;
  throw new RangeError(`dtype ${dtype} has no GGML type id`);
}

/** Names of GGML types the runtime does not read (ids 4, 5, 31-33, 36-38 were removed). */
const OTHER_TYPE_NAMES: Record<number, string> = {
  3: "Q4_1",
  7: "Q5_1",
  9: "Q8_1",
  10: "Q2_K",
  11: "Q3_K",
  13: "Q5_K",
  15: "Q8_K",
  16: "IQ2_XXS",
  17: "IQ2_XS",
  18: "IQ3_XXS",
  19: "IQ1_S",
  20: "IQ4_NL",
  21: "IQ3_S",
  22: "IQ2_S",
  23: "IQ4_XS",
  24: "I8",
  25: "I16",
  26: "I32",
  27: "I64",
  28: "F64",
  29: "IQ1_M",
  34: "TQ1_0",
  35: "TQ2_0",
  39: "MXFP4",
};

/** "Q4_1 (GGML type 3)", or "unknown GGML type 99". */
export function ggmlTypeName(id: number): string {
  const name = GGML_TYPES.get(id)?.dtype ?? OTHER_TYPE_NAMES[id];
  return name === undefined ? `unknown GGML type ${id}` : `${name} (GGML type ${id})`;
}

/** The readable types as a list for messages: "F32, F16, BF16, Q8_0, ...". */
export function readableTypeList(): string {
  return [...GGML_TYPES.values()].map((t) => t.dtype).join(", ");
}
