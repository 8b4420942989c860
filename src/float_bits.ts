/**
 * bf16 and f16 bit patterns to and from f32, exactly (round-to-nearest-even where a value must be
 * rounded). A module of its own so the quantizers and dtype.ts both use it without a cycle.
 */

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
