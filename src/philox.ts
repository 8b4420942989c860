/**
 * Philox4x32-10, the counter-based generator of Salmon, Moraes, Dror and Shaw, "Parallel random
 * numbers: as easy as 1, 2, 3" (SC11), as in D. E. Shaw Research's Random123 library: the output
 * is a pure function of a 128-bit counter and a 64-bit key, so the GPU (kernels/sample_draw.wgsl,
 * which carries the same code in WGSL) and the CPU draw the same numbers without sharing a state.
 *
 * A round: (hi0, lo0) = M0 * c0, (hi1, lo1) = M1 * c2 (32 x 32 -> 64-bit products);
 * c = (hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0); then the key is bumped by the Weyl constants.
 */

/** Four 32-bit words (a counter or an output) and two (a key), each an unsigned integer. */
export type Words4 = [number, number, number, number];
export type Words2 = [number, number];

/** Random123's multipliers (PHILOX_M4x32_0/1) and Weyl key increments (PHILOX_W32_0/1). */
const M0 = 0xD2511F53;
const M1 = 0xCD9E8D57;
const W0 = 0x9E3779B9;
const W1 = 0xBB67AE85;
/** Rounds of Philox4x32-10. */
const ROUNDS = 10;
/** 2^-24: a 24-bit integer times this is an f32 in [0, 1), exactly. */
const TWO_POW_MINUS_24 = 2 ** -24;
const TWO_POW_32 = 2 ** 32;

/** The high 32 bits of the 64-bit product of two u32, exactly (four 16 x 16-bit products, each
 * below 2^32 and so exact in a double). The low word is Math.imul(a, b) >>> 0. */
export function mulhi32(a: number, b: number): number {
  const aLo = a & 0xffff, aHi = a >>> 16;
  const bLo = b & 0xffff, bHi = b >>> 16;
  const lolo = aLo * bLo;
  const lohi = aLo * bHi;
  const hilo = aHi * bLo;
  const hihi = aHi * bHi;
  // Carries into bit 32 from the middle column: below 3 * 2^16, no overflow.
  const mid = (lolo >>> 16) + (lohi & 0xffff) + (hilo & 0xffff);
  return (hihi + (lohi >>> 16) + (hilo >>> 16) + (mid >>> 16)) >>> 0;
}

/** Philox4x32 with `rounds` rounds (10 unless a test asks for Random123's 7-round vectors). */
export function philox4x32(ctr: Words4, key: Words2, rounds = ROUNDS): Words4 {
  let [c0, c1, c2, c3] = ctr.map((w) => w >>> 0);
  let [k0, k1] = key.map((w) => w >>> 0);
  for (let r = 0; r < rounds; r++) {
    if (r > 0) {
      k0 = (k0 + W0) >>> 0;
      k1 = (k1 + W1) >>> 0;
    }
    const hi0 = mulhi32(M0, c0), lo0 = Math.imul(M0, c0) >>> 0;
    const hi1 = mulhi32(M1, c2), lo1 = Math.imul(M1, c2) >>> 0;
    c0 = (hi1 ^ c1 ^ k0) >>> 0;
    c1 = lo1;
    c2 = (hi0 ^ c3 ^ k1) >>> 0;
    c3 = lo0;
  }
  return [c0, c1, c2, c3];
}

/** The key of a seed: the seed (a safe integer, possibly negative) as a 64-bit two's complement
 * integer, split into its low and high u32 words. */
export function seedKey(seed: number): Words2 {
  if (!Number.isSafeInteger(seed)) {
    throw new RangeError(`seed must be a safe integer, got ${seed}`);
  }
  // For negative seeds, 2^64 + seed: its low word is seed mod 2^32 and its high word is
  // floor(seed / 2^32) mod 2^32 (floor rounds toward -infinity, as two's complement needs).
  const lo = ((seed % TWO_POW_32) + TWO_POW_32) % TWO_POW_32;
  const hi = ((Math.floor(seed / TWO_POW_32) % TWO_POW_32) + TWO_POW_32) % TWO_POW_32;
  return [lo >>> 0, hi >>> 0];
}

/** A uniform number in [0, 1) on a grid of 2^-24 (exact in f32): the top 24 bits of the first
 * output word of Philox4x32-10 at counter (counter, 0, 0, 0) and key seedKey(seed). */
export function uniform24(seed: number, counter: number): number {
  const [w] = philox4x32([counter >>> 0, 0, 0, 0], seedKey(seed));
  return (w >>> 8) * TWO_POW_MINUS_24;
}
