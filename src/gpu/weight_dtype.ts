/**
 * Weight element types as the GPU kernels see them: the loader kernels/weights_<dtype>.wgsl reads
 * elements of that type. Float types are addressed per element; GGML's block-quantized types per
 * block (an element offset must be a whole number of blocks, and the block at element offset e
 * starts at byte e / elems * bytes of the binding).
 */
import type { DType } from "../types.ts";
import { QUANT_FORMATS, type QuantType } from "../quant/formats.ts";
import type { WeightDType } from "./ops_api.ts";

/** The kernels' name of each checkpoint dtype. */
export const WEIGHT_DTYPES: Record<DType, WeightDType> = {
  F32: "f32",
  BF16: "bf16",
  F16: "f16",
  Q8_0: "q8_0",
  Q4_0: "q4_0",
  Q5_0: "q5_0",
  Q4_K: "q4_k",
  Q6_K: "q6_k",
};

const QUANT_OF: Partial<Record<WeightDType, QuantType>> = {
  q8_0: "Q8_0",
  q4_0: "Q4_0",
  q5_0: "Q5_0",
  q4_k: "Q4_K",
  q6_k: "Q6_K",
};

/** The addressing unit of a weight type: `elems` elements in `bytes` bytes. */
export interface WeightBlock {
  elems: number;
  bytes: number;
}

const FLOAT_BLOCKS: Partial<Record<WeightDType, WeightBlock>> = {
  f32: { elems: 1, bytes: 4 },
  bf16: { elems: 1, bytes: 2 },
  f16: { elems: 1, bytes: 2 },
};

export function weightBlock(dtype: WeightDType): WeightBlock {
  const q = QUANT_OF[dtype];
  return q ? QUANT_FORMATS[q] : FLOAT_BLOCKS[dtype]!;
}

/** Bytes of `elems` elements (whole blocks) of dtype; throws RangeError on a partial block. */
export function weightBytes(dtype: WeightDType, elems: number): number {
  const b = weightBlock(dtype);
  if (elems % b.elems !== 0) {
    throw new RangeError(`${elems} ${dtype} elements are not whole blocks of ${b.elems}`);
  }
  return (elems / b.elems) * b.bytes;
}

/** Elements held by `bytes` bytes of dtype (bytes a whole number of blocks). */
export function weightElems(dtype: WeightDType, bytes: number): number {
  const b = weightBlock(dtype);
  if (bytes % b.bytes !== 0) {
    throw new RangeError(`${bytes} B are not whole ${dtype} blocks of ${b.bytes} B`);
  }
  return (bytes / b.bytes) * b.elems;
}

function gcd(a: number, b: number): number {
  while (b) [a, b] = [b, a % b];
  return a;
}

/** Least common multiple of positive integers. */
export function lcm(...values: number[]): number {
  return values.reduce((a, b) => (a / gcd(a, b)) * b, 1);
}
