/**
 * GGML's block-quantized element types, as llama.cpp's ggml-common.h lays them out: a row of a
 * tensor is a sequence of blocks, each `elems` values stored in `bytes` bytes (little-endian f16
 * scales). The bytes are exactly what a GGUF file holds, so a record packed here and a tensor read
 * from a GGUF file are the same bytes.
 *
 *   Q8_0  32 values: f16 d, int8 qs[32]                                  x = d * q
 *   Q4_0  32 values: f16 d, u8 qs[16] (j: low nibble, j+16: high)        x = d * (q - 8)
 *   Q5_0  32 values: f16 d, u32 qh (5th bits), u8 qs[16] as Q4_0         x = d * (q - 16)
 *   Q4_K 256 values: f16 d, f16 dmin, u8 scales[12] (6-bit scales and mins of 8 sub-blocks of 32),
 *                    u8 qs[128]                                          x = d*sc*q - dmin*m
 *   Q6_K 256 values: u8 ql[128], u8 qh[64], int8 scales[16], f16 d        x = d * sc * (q - 32)
 */

/** Block-quantized types this runtime reads and writes. */
export type QuantType = "Q8_0" | "Q4_0" | "Q5_0" | "Q4_K" | "Q6_K";

export interface QuantFormat {
  /** Values per block (a row length must be a multiple of it). */
  elems: number;
  /** Bytes per block. */
  bytes: number;
  /** GGML's type id (ggml.h `enum ggml_type`), as a GGUF tensor info stores it. */
  ggmlType: number;
}

export const QUANT_FORMATS: Record<QuantType, QuantFormat> = {
  Q8_0: { elems: 32, bytes: 34, ggmlType: 8 },
  Q4_0: { elems: 32, bytes: 18, ggmlType: 2 },
  Q5_0: { elems: 32, bytes: 22, ggmlType: 6 },
  Q4_K: { elems: 256, bytes: 144, ggmlType: 12 },
  Q6_K: { elems: 256, bytes: 210, ggmlType: 14 },
};

export const QUANT_TYPES = Object.keys(QUANT_FORMATS) as QuantType[];

export function isQuantType(t: string): t is QuantType {
  return Object.hasOwn(QUANT_FORMATS, t);
}

/** Bytes of one row of `cols` values; throws when cols is not a multiple of the block. */
export function quantRowBytes(type: QuantType, cols: number): number {
  const f = QUANT_FORMATS[type];
  if (cols % f.elems !== 0) {
    throw new RangeError(`a ${type} row holds whole blocks of ${f.elems} values; ${cols} is not`);
  }
  return (cols / f.elems) * f.bytes;
}
