/**
 * Element-type conversions for checkpoint tensors: bf16 and f16 bit patterns to and from f32, and
 * whole TensorViews to Float32Array / Float64Array (CPU reference, tests, uploads of norms).
 */

import type { DType, FloatDType, TensorView } from "./types.ts";
import { quantRowBytes } from "./quant/formats.ts";
import { dequantizeRows } from "./quant/dequantize.ts";
import { bf16ToF32, f16ToF32, f32ToBf16, f32ToF16 } from "./float_bits.ts";

export { bf16ToF32, f16ToF32, f32ToBf16, f32ToF16 } from "./float_bits.ts";

/** Bytes per element of each floating-point dtype. */
export const DTYPE_BYTES: Record<FloatDType, number> = { F32: 4, BF16: 2, F16: 2 };

export function isFloatDType(dtype: string): dtype is FloatDType {
  return Object.hasOwn(DTYPE_BYTES, dtype);
}

/** Bytes of a row-major tensor of this dtype and shape. Block-quantized types store each row (the
 * last dimension) as whole blocks: throws RangeError when it is not a multiple of the block. */
export function tensorBytes(dtype: DType, shape: readonly number[]): number {
  if (isFloatDType(dtype)) return elementCount(shape) * DTYPE_BYTES[dtype];
  const cols = shape.length === 0 ? 1 : shape[shape.length - 1];
  return (elementCount(shape) / cols) * quantRowBytes(dtype, cols);
}

function convert<T extends Float32Array | Float64Array>(view: TensorView, out: T): T {
  const b = view.bytes;
  const dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
  const n = out.length;
  if (!isFloatDType(view.dtype)) {
    const cols = view.shape.length === 0 ? 1 : view.shape[view.shape.length - 1];
    out.set(dequantizeRows(view.dtype, view.bytes, n / cols, cols));
  } else if (view.dtype === "F32") {
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

/** The tensor's values as a new Float32Array (exact for the float dtypes; quantized ones are
 * dequantized exactly as GGML's dequantize_row_*). */
export function toFloat32(view: TensorView): Float32Array<ArrayBuffer> {
  return convert(view, new Float32Array(elementCount(view.shape)));
}

/** The tensor's values as a new Float64Array (as toFloat32, widened). */
export function toFloat64(view: TensorView): Float64Array<ArrayBuffer> {
  return convert(view, new Float64Array(elementCount(view.shape)));
}

/** Encodes f32 values as little-endian bytes of the given dtype (fixture and test writing). */
export function encodeFloats(
  values: ArrayLike<number>,
  dtype: FloatDType,
): Uint8Array<ArrayBuffer> {
  const out = new Uint8Array(values.length * DTYPE_BYTES[dtype]);
  const dv = new DataView(out.buffer);
  for (let i = 0; i < values.length; i++) {
    if (dtype === "F32") dv.setFloat32(i * 4, values[i], true);
    else if (dtype === "BF16") dv.setUint16(i * 2, f32ToBf16(values[i]), true);
    else dv.setUint16(i * 2, f32ToF16(values[i]), true);
  }
  return out;
}
