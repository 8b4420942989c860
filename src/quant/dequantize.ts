/**
 * GGML block-quantized rows back to f32, exactly as llama.cpp's ggml-quants.c dequantize_row_*:
 * the f16 scales widened exactly, then each product rounded to f32 in the order C evaluates it
 * (`d * sc * q` is `(d * sc) * q`; Q4_K's `d1 * q - m1` is a rounded product then a rounded
 * difference, no fused multiply-add: ggml-base is built without FMA on x86-64). Layouts are in
 * formats.ts.
 */

import { f16ToF32 } from "../float_bits.ts";
import { QUANT_FORMATS, quantRowBytes, type QuantType } from "./formats.ts";

const f32 = Math.fround;

/** Values per block of the 32-value types (QK8_0, QK4_0, QK5_0 in ggml-common.h). */
const QK = 32;
/** Values per super-block of the K-quants (QK_K). */
const QK_K = 256;
/** Q4_0's and Q5_0's stored offset: q - 8 and q - 16 are the signed levels. */
const Q4_0_OFFSET = 8;
const Q5_0_OFFSET = 16;
/** Q6_K's stored offset: 6-bit q - 32 is the signed level. */
const Q6_K_OFFSET = 32;

/** Byte offsets inside the 32-value blocks: each starts with its f16 d; Q5_0 then has the u32 qh. */
export const D_AT = 0;
export const Q8_0_QS = 2;
export const Q4_0_QS = 2;
export const Q5_0_QH = 2;
export const Q5_0_QS = 6;
/** Byte offsets inside a Q4_K block: f16 d, f16 dmin, 12 packed scale/min bytes, 128 bytes of
 * nibbles. */
export const Q4_K_D = 0;
export const Q4_K_DMIN = 2;
export const Q4_K_SCALES = 4;
export const Q4_K_QS = 16;
/** Byte offsets inside a Q6_K block: 128 low-nibble bytes, 64 high-2-bit bytes, 16 int8 scales,
 * f16 d. */
export const Q6_K_QL = 0;
export const Q6_K_QH = 128;
export const Q6_K_SCALES = 192;
export const Q6_K_D = 208;

/** Little-endian f16 at b[o] as a number. */
function readF16(b: Uint8Array, o: number): number {
  return f16ToF32(b[o] | (b[o + 1] << 8));
}

/** Q4_K's 6-bit scale of sub-block j (0..7) from the 12 packed bytes at b[o] (get_scale_min_k4):
 * sub-blocks 0-3 keep it in the low 6 bits of byte j; 4-7 in the low nibble of byte j+4 with the
 * top 2 bits in the top 2 bits of byte j-4. */
export function q4KScale(b: Uint8Array, o: number, j: number): number {
  return j < 4 ? b[o + j] & 63 : (b[o + j + 4] & 0xf) | ((b[o + j - 4] >> 6) << 4);
}

/** Q4_K's 6-bit min of sub-block j from the same bytes: 0-3 in the low 6 bits of byte j+4; 4-7 in
 * the high nibble of byte j+4 with the top 2 bits in the top 2 bits of byte j. */
export function q4KMin(b: Uint8Array, o: number, j: number): number {
  return j < 4 ? b[o + j + 4] & 63 : (b[o + j + 4] >> 4) | ((b[o + j] >> 6) << 4);
}

/** dequantize_row_q8_0: x = d * q. */
function dequantizeQ8_0Block(b: Uint8Array, o: number, y: Float32Array, yo: number): void {
  const d = readF16(b, o + D_AT);
  for (let j = 0; j < QK; j++) y[yo + j] = ((b[o + Q8_0_QS + j] << 24) >> 24) * d; // int8 * f32
}

/** dequantize_row_q4_0: x[j] = (low nibble of qs[j] - 8) * d, x[j+16] = (high nibble - 8) * d. */
function dequantizeQ4_0Block(b: Uint8Array, o: number, y: Float32Array, yo: number): void {
  const d = readF16(b, o + D_AT);
  for (let j = 0; j < QK / 2; j++) {
    const q = b[o + Q4_0_QS + j];
    y[yo + j] = ((q & 0xf) - Q4_0_OFFSET) * d;
    y[yo + j + QK / 2] = ((q >> 4) - Q4_0_OFFSET) * d;
  }
}

/** dequantize_row_q5_0: as Q4_0 with bit j of qh as the 5th bit of value j, offset 16. */
function dequantizeQ5_0Block(b: Uint8Array, o: number, y: Float32Array, yo: number): void {
  const d = readF16(b, o + D_AT);
  const h = o + Q5_0_QH;
  const qh = (b[h] | (b[h + 1] << 8) | (b[h + 2] << 16) | (b[h + 3] << 24)) >>> 0;
  for (let j = 0; j < QK / 2; j++) {
    const q = b[o + Q5_0_QS + j];
    const h0 = ((qh >>> j) << 4) & 0x10;
    const h1 = (qh >>> (j + 12)) & 0x10;
    y[yo + j] = (((q & 0xf) | h0) - Q5_0_OFFSET) * d;
    y[yo + j + QK / 2] = (((q >> 4) | h1) - Q5_0_OFFSET) * d;
  }
}

/** dequantize_row_q4_K: per 64 values, sub-blocks 2i (low nibbles) and 2i+1 (high nibbles) of the
 * same 32 bytes; x = (d * sc) * q - (dmin * m). */
function dequantizeQ4_KBlock(b: Uint8Array, o: number, y: Float32Array, yo: number): void {
  const d = readF16(b, o + Q4_K_D);
  const dmin = readF16(b, o + Q4_K_DMIN);
  const sc = o + Q4_K_SCALES;
  for (let c = 0; c < QK_K / 64; c++) {
    const q = o + Q4_K_QS + 32 * c;
    const d1 = f32(d * q4KScale(b, sc, 2 * c)), m1 = f32(dmin * q4KMin(b, sc, 2 * c));
    const d2 = f32(d * q4KScale(b, sc, 2 * c + 1)), m2 = f32(dmin * q4KMin(b, sc, 2 * c + 1));
    const base = yo + 64 * c;
    for (let l = 0; l < 32; l++) y[base + l] = f32(d1 * (b[q + l] & 0xf)) - m1;
    for (let l = 0; l < 32; l++) y[base + 32 + l] = f32(d2 * (b[q + l] >> 4)) - m2;
  }
}

/** dequantize_row_q6_K: per 128 values, ql holds low nibbles of values l and l+64 (bytes 0-31) and
 * l+32 and l+96 (bytes 32-63); qh holds the top 2 bits of l, l+32, l+64, l+96 at bit 0, 2, 4, 6;
 * x = (d * sc) * (q - 32) with an int8 scale per 16 values. */
function dequantizeQ6_KBlock(b: Uint8Array, o: number, y: Float32Array, yo: number): void {
  const d = readF16(b, o + Q6_K_D);
  for (let c = 0; c < QK_K / 128; c++) {
    const ql = o + Q6_K_QL + 64 * c, qh = o + Q6_K_QH + 32 * c, sc = o + Q6_K_SCALES + 8 * c;
    const base = yo + 128 * c;
    for (let l = 0; l < 32; l++) {
      const is = l >> 4;
      const h = b[qh + l];
      const q1 = ((b[ql + l] & 0xf) | ((h & 3) << 4)) - Q6_K_OFFSET;
      const q2 = ((b[ql + l + 32] & 0xf) | (((h >> 2) & 3) << 4)) - Q6_K_OFFSET;
      const q3 = ((b[ql + l] >> 4) | (((h >> 4) & 3) << 4)) - Q6_K_OFFSET;
      const q4 = ((b[ql + l + 32] >> 4) | (((h >> 6) & 3) << 4)) - Q6_K_OFFSET;
      y[base + l] = f32(d * ((b[sc + is] << 24) >> 24)) * q1;
      y[base + l + 32] = f32(d * ((b[sc + is + 2] << 24) >> 24)) * q2;
      y[base + l + 64] = f32(d * ((b[sc + is + 4] << 24) >> 24)) * q3;
      y[base + l + 96] = f32(d * ((b[sc + is + 6] << 24) >> 24)) * q4;
    }
  }
}

type DequantizeBlock = (b: Uint8Array, o: number, y: Float32Array, yo: number) => void;

const DEQUANTIZE_BLOCK: Record<QuantType, DequantizeBlock> = {
  Q8_0: dequantizeQ8_0Block,
  Q4_0: dequantizeQ4_0Block,
  Q5_0: dequantizeQ5_0Block,
  Q4_K: dequantizeQ4_KBlock,
  Q6_K: dequantizeQ6_KBlock,
};

/** `rows` rows of `cols` values stored as `type` blocks back to row-major f32. Throws RangeError
 * when cols is not whole blocks or bytes is not rows * quantRowBytes(type, cols) long. */
export function dequantizeRows(
  type: QuantType,
  bytes: Uint8Array,
  rows: number,
  cols: number,
): Float32Array<ArrayBuffer> {
  const rowBytes = quantRowBytes(type, cols);
  if (!Number.isInteger(rows) || rows < 0 || bytes.length !== rows * rowBytes) {
    throw new RangeError(
      `${rows} rows of ${cols} ${type} values take ${rows * rowBytes} bytes; got ${bytes.length}`,
    );
  }
  const { elems, bytes: blockBytes } = QUANT_FORMATS[type];
  const block = DEQUANTIZE_BLOCK[type];
  const out = new Float32Array(rows * cols);
  const blocks = (rows * cols) / elems;
  for (let i = 0; i < blocks; i++) block(bytes, i * blockBytes, out, i * elems);
  return out;
}
