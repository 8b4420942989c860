/**
 * Element-type conversions for checkpoint tensors: bf16 and f16 bit patterns to and from f32, and
 * whole TensorViews to Float32Array / Float64Array (CPU reference, tests, uploads of norms).
 */

import type { DType, TensorView } from "./types.ts";

/** Bytes per element of each checkpoint dtype. */
export const DTYPE_BYTES: Record<DType, number> = { F32: 4, BF16: 2, F16: 2 };

const f32Scratch = new Float32Array(1);
const u32Scratch = new Uint32Array(f32Scratch.buffer);

/** bf16 bits (upper half of an f32) to the number they encode (exact). */
export function bf16ToF32(bits: number): number {
  u32Scratch[0] = (bits & 0xffff) << 16;
  return f32Scratch[0];
}

/** f32 value to bf16 bits, round-to-nearest-even; NaN stays a quiet NaN. */
export function f32ToBf16(value: number): number {
  f32Scratch[0] = value;
  const x = u32Scratch[0];
  if ((x & 0x7fffffff) > 0x7f800000) return ((x >>> 16) | 0x0040) & 0xffff; // NaN: keep it NaN
  const lsb = (x >>> 16) & 1;
  return ((x + 0x7fff + lsb) >>> 16) & 0xffff;
}

/** f16 bits to the number they encode (exact; subnormals, infinities and NaN included). */
export function f16ToF32(bits: number): number {
  const sign = bits & 0x8000 ? -1 : 1;
  const exp = (bits >>> 10) & 0x1f;
  const frac = bits & 0x3ff;
  if (exp === 0) return sign * frac * 2 ** -24; // zero or subnormal
  if (exp === 0x1f) return frac === 0 ? sign * Infinity : NaN;
  return sign * (1 + frac / 1024) * 2 ** (exp - 15);
}

/** f32 value to f16 bits, round-to-nearest-even (overflow to infinity, underflow to subnormals). */
export function f32ToF16(value: number): number {
  f32Scratch[0] = value;
  const x = u32Scratch[0];
  const sign = (x >>> 16) & 0x8000;
  const exp = (x >>> 23) & 0xff;
  const mant = x & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant !== 0 ? 0x200 : 0); // inf or NaN
  const e = exp - 127 + 15; // rebias
  if (e >= 0x1f) return sign | 0x7c00; // overflow
  if (e <= 0) {
    // Subnormal or zero in f16: shift the full significand (with its implicit 1) into place.
    if (e < -10) return sign; // below half the smallest subnormal: rounds to zero
    const full = mant | 0x800000;
    const shift = 14 - e; // 24-bit significand down to the 10-bit subnormal field
    const half = 1 << (shift - 1);
    const rest = full & ((1 << shift) - 1);
    let m = full >>> shift;
    if (rest > half || (rest === half && (m & 1) === 1)) m += 1;
    return sign | m; // m may carry into the exponent field: that is the right answer
  }
  let out = (e << 10) | (mant >>> 13);
  const rest = mant & 0x1fff;
  if (rest > 0x1000 || (rest === 0x1000 && (out & 1) === 1)) out += 1; // may carry to inf: right
  return sign | out;
}

function convert<T extends Float32Array | Float64Array>(view: TensorView, out: T): T {
  const b = view.bytes;
  const dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
  const n = out.length;
  if (view.dtype === "F32") {
    for (let i = 0; i < n; i++) out[i] = dv.getFloat32(i * 4, true);
  } else if (view.dtype === "BF16") {
    for (let i = 0; i < n; i++) out[i] = bf16ToF32(dv.getUint16(i * 2, true));
  } else {
    for (let i = 0; i < n; i++) out[i] = f16ToF32(dv.getUint16(i * 2, true));
  }
  return out;
}

/** Number of elements of a view's shape. */
export function elementCount(shape: readonly number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

/** The tensor's values as a new Float32Array (exact for all three dtypes). */
export function toFloat32(view: TensorView): Float32Array<ArrayBuffer> {
  return convert(view, new Float32Array(elementCount(view.shape)));
}

/** The tensor's values as a new Float64Array (exact for all three dtypes). */
export function toFloat64(view: TensorView): Float64Array<ArrayBuffer> {
  return convert(view, new Float64Array(elementCount(view.shape)));
}

/** Encodes f32 values as little-endian bytes of the given dtype (fixture and test writing). */
export function encodeFloats(values: ArrayLike<number>, dtype: DType): Uint8Array<ArrayBuffer> {
  const out = new Uint8Array(values.length * DTYPE_BYTES[dtype]);
  const dv = new DataView(out.buffer);
  for (let i = 0; i < values.length; i++) {
    if (dtype === "F32") dv.setFloat32(i * 4, values[i], true);
    else if (dtype === "BF16") dv.setUint16(i * 2, f32ToBf16(values[i]), true);
    else dv.setUint16(i * 2, f32ToF16(values[i]), true);
  }
  return out;
}
