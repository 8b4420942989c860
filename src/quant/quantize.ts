/**
 * f32 rows to GGML block-quantized bytes, byte for byte what llama.cpp's reference quantizers in
 * ggml-quants.c write: quantize_row_q8_0_ref, _q4_0_ref, _q5_0_ref, _q4_K_ref (make_qkx2_quants)
 * and _q6_K_ref (make_qx_quants). These are what llama-quantize runs without an imatrix:
 * ggml_quantize_chunk -> quantize_q4_K(..., quant_weights = NULL) -> quantize_row_q4_K_ref, and
 * likewise for the others (quantize_q8_0 ignores the imatrix altogether).
 *
 * Byte-exactness rests on doing C's float arithmetic: every `float` operation is one f32 rounding
 * (x86-64 SSE, FLT_EVAL_METHOD 0, no FMA: ggml-base, where ggml-quants.c lives, is built without
 * -march flags), so each is written `f32(a op b)` (an f32 op computed in f64 and rounded once is
 * the correctly rounded f32 result for + - * / and sqrt). C's conversions are reproduced too:
 * `roundf` rounds half away from zero; `nearest_int` is the 1.5 * 2^23 magic-number trick (ties
 * to even); a float cast to int8_t/uint8_t is x86's truncating cvttss2si, keeping the low byte;
 * GGML_FP32_TO_FP16 rounds to nearest even (f32ToF16).
 */

import { f16ToF32, f32ToF16 } from "../float_bits.ts";
import {
  D_AT,
  Q4_0_QS,
  Q4_K_D,
  Q4_K_DMIN,
  Q4_K_QS,
  Q4_K_SCALES,
  q4KMin,
  q4KScale,
  Q5_0_QH,
  Q5_0_QS,
  Q6_K_D,
  Q6_K_QH,
  Q6_K_QL,
  Q6_K_SCALES,
  Q8_0_QS,
} from "./dequantize.ts";
import { QUANT_FORMATS, quantRowBytes, type QuantType } from "./formats.ts";

const f32 = Math.fround;

/** Values per block of the 32-value types (QK8_0, QK4_0, QK5_0). */
const QK = 32;
/** Values per K-quant super-block (QK_K), sub-blocks of Q4_K and Q6_K. */
const QK_K = 256;
const Q4_K_SUB = 32;
const Q6_K_SUB = 16;

/** nearest_int's addend, 1.5 * 2^23 (12582912.f): f + MAGIC lands in [2^23, 2^24), where the f32
 * ulp is 1, so the add itself rounds f to an integer (ties to even) held in the mantissa. */
const NEAREST_INT_MAGIC = 12582912;
const TWO_POW_23 = 8388608;
const TWO_POW_24 = 16777216;
/** The mantissa field and the 2^22 that MAGIC's mantissa carries (nearest_int's two masks). */
const MANTISSA_MASK = 0x007fffff;
const MAGIC_MANTISSA = 0x00400000;
/** x86's cvttss2si result for NaN and out-of-range inputs ("integer indefinite"). */
const INT32_INDEFINITE = -2147483648;
const TWO_POW_31 = 2147483648;
/** GROUP_MAX_EPS (1e-15f): make_qx_quants treats a group below it as all zero, and so does Q6_K. */
const GROUP_MAX_EPS = f32(1e-15);
/** 0.1f as C holds it (make_qx_quants' and make_qkx2_quants' step factor). */
const TENTH = f32(0.1);

/** Q8_0's and the _0 types' largest level: 127 = (1 << 7) - 1; Q4_0 and Q5_0 map the signed
 * maximum to -8 and -16, and clamp the biased level to 15 and 31. */
const Q8_0_MAX = 127;
const Q4_0_NEG = -8, Q4_0_BIAS = 8.5, Q4_0_TOP = 15;
const Q5_0_NEG = -16, Q5_0_BIAS = 16.5, Q5_0_TOP = 31;
/** Q4_K: 4-bit levels (nmax 15), 6-bit scales and mins (63), make_qkx2_quants(32, 15, ..., -1.f,
 * 0.1f, 20, use_mad = false) as quantize_row_q4_K_ref calls it. */
const Q4_K_NMAX = 15;
const Q4_K_SCALE_MAX = 63;
const Q4_K_RMIN = -1;
const Q4_K_RDELTA = TENTH;
const Q4_K_NSTEP = 20;
/** Q6_K: 6-bit levels -32..31 (nmax 32), int8 scales with the largest mapped to -128. */
const Q6_K_NMAX = 32;
const Q6_K_SCALE_NEG = -128;
const Q6_K_SCALE_TOP = 127;

const bitsF32 = new Float32Array(1);
const bitsI32 = new Int32Array(bitsF32.buffer);

/** ggml-quants.c nearest_int(fval): `val = fval + 12582912.f`, then the low 23 bits of val's
 * pattern minus 0x400000. For |fval| < 2^22 that is fval rounded half to even; outside it is the
 * same bit arithmetic (C asserts against it, but release builds run it). */
function nearestInt(fval: number): number {
  const val = f32(fval + NEAREST_INT_MAGIC);
  if (val >= TWO_POW_23 && val < TWO_POW_24) return val - NEAREST_INT_MAGIC;
  bitsF32[0] = val;
  return (bitsI32[0] & MANTISSA_MASK) - MAGIC_MANTISSA;
}

/** C's roundf: nearest integer, halves away from zero (Math.round would send -2.5 to -2). */
function roundf(v: number): number {
  const a = Math.floor(Math.abs(v) + 0.5); // exact: |v| is an f32, v + 0.5 fits an f64
  return v < 0 ? -a : a;
}

/** The low byte of C's `(int)v` for a float v on x86-64 (cvttss2si truncates toward zero; NaN and
 * values outside int32 give 0x80000000): what `(int8_t)v` and `(uint8_t)v` store. */
function cvtByte(v: number): number {
  const t = v > -TWO_POW_31 - 1 && v < TWO_POW_31 ? Math.trunc(v) : INT32_INDEFINITE;
  return t & 0xff;
}

/** A byte read as C's int8_t. */
function asInt8(byte: number): number {
  return (byte << 24) >> 24;
}

/** Stores f16 bits little-endian at out[o]. */
function writeF16(out: Uint8Array, o: number, bits: number): void {
  out[o] = bits & 0xff;
  out[o + 1] = bits >> 8;
}

/** The value of largest magnitude in x[o..o+n) (the first of equals), as the _0 quantizers find
 * it (`if (amax < fabsf(v)) { amax = fabsf(v); max = v; }`). */
function signedAbsMax(x: Float32Array, o: number, n: number): number {
  let amax = 0, max = 0;
  for (let j = 0; j < n; j++) {
    const v = x[o + j];
    if (amax < Math.abs(v)) {
      amax = Math.abs(v);
      max = v;
    }
  }
  return max;
}

/** Q4_0's and Q5_0's level of x / d: `const uint8_t xi = MIN(top, (int8_t)(x0 + bias))`, the
 * float sum truncated to int8, the smaller of it and top, kept as a byte. */
function biasedLevel(x0: number, bias: number, top: number): number {
  return Math.min(top, asInt8(cvtByte(f32(x0 + bias)))) & 0xff;
}

/** quantize_row_q8_0_ref: d = amax / 127, q = roundf(x * (1/d)). */
function quantizeQ8_0Block(x: Float32Array, xo: number, out: Uint8Array, oo: number): void {
  let amax = 0;
  for (let j = 0; j < QK; j++) {
    const a = Math.abs(x[xo + j]);
    amax = amax > a ? amax : a; // MAX(amax, fabsf(v))
  }
  const d = f32(amax / Q8_0_MAX);
  const id = d !== 0 ? f32(1 / d) : 0;
  writeF16(out, oo + D_AT, f32ToF16(d));
  for (let j = 0; j < QK; j++) out[oo + Q8_0_QS + j] = cvtByte(roundf(f32(x[xo + j] * id)));
}

/** quantize_row_q4_0_ref: d = max / -8 (max the signed value of largest magnitude), q =
 * MIN(15, (int8_t)(x * (1/d) + 8.5f)); value j in the low nibble of byte j, j+16 in the high. */
function quantizeQ4_0Block(x: Float32Array, xo: number, out: Uint8Array, oo: number): void {
  const d = f32(signedAbsMax(x, xo, QK) / Q4_0_NEG);
  const id = d !== 0 ? f32(1 / d) : 0;
  writeF16(out, oo + D_AT, f32ToF16(d));
  for (let j = 0; j < QK / 2; j++) {
    const q0 = biasedLevel(f32(x[xo + j] * id), Q4_0_BIAS, Q4_0_TOP);
    const q1 = biasedLevel(f32(x[xo + j + QK / 2] * id), Q4_0_BIAS, Q4_0_TOP);
    out[oo + Q4_0_QS + j] = (q0 | (q1 << 4)) & 0xff;
  }
}

/** quantize_row_q5_0_ref: d = max / -16, q = MIN(31, (int8_t)(x * (1/d) + 16.5f)); low nibbles
 * as Q4_0, the 5th bit of value j in bit j of the little-endian u32 qh. */
function quantizeQ5_0Block(x: Float32Array, xo: number, out: Uint8Array, oo: number): void {
  const d = f32(signedAbsMax(x, xo, QK) / Q5_0_NEG);
  const id = d !== 0 ? f32(1 / d) : 0;
  writeF16(out, oo + D_AT, f32ToF16(d));
  let qh = 0;
  for (let j = 0; j < QK / 2; j++) {
    const q0 = biasedLevel(f32(x[xo + j] * id), Q5_0_BIAS, Q5_0_TOP);
    const q1 = biasedLevel(f32(x[xo + j + QK / 2] * id), Q5_0_BIAS, Q5_0_TOP);
    out[oo + Q5_0_QS + j] = (q0 & 0xf) | ((q1 & 0xf) << 4);
    qh |= ((q0 & 0x10) >> 4) << j;
    qh |= ((q1 & 0x10) >> 4) << (j + QK / 2);
  }
  const h = oo + Q5_0_QH; // memcpy of the u32: little-endian
  out[h] = qh & 0xff;
  out[h + 1] = (qh >>> 8) & 0xff;
  out[h + 2] = (qh >>> 16) & 0xff;
  out[h + 3] = qh >>> 24;
}

/** Sub-blocks per K-quant super-block. */
const Q4_K_SUBS = QK_K / Q4_K_SUB;
const Q6_K_SUBS = QK_K / Q6_K_SUB;

/**
 * Scratch of the K-quant quantizers, one super-block at a time (nothing is allocated per call).
 *
 * Their searches (make_qkx2_quants, make_qx_quants) run all sub-blocks of a super-block in
 * lockstep: loops go value by value and, inside, sub-block by sub-block, each with its own
 * accumulators. Each sub-block still does exactly C's f32 operations in C's order; interleaving
 * only hides the latency of the f32 sums (chains of dependent roundings). Per-sub-block state
 * lives in Float32Arrays, whose stores round to f32 as C's float variables do (`acc[j] += t` is
 * one f32 addition). Functions take these into locals first: V8 keeps locals in registers but
 * reloads module-level bindings in every iteration.
 */
const scratch = {
  levels: new Uint8Array(QK_K), // L: the chosen level of each value of the super-block
  levelsAux: new Uint8Array(QK_K), // Laux: make_qkx2_quants' candidate levels
  weights: new Float32Array(QK_K), // Q4_K's weights, av_x + |x|
  xMinusMin: new Float32Array(QK_K), // Q4_K: x - min, for the sub-block's current min
  xSquared: new Float32Array(QK_K), // Q6_K: w = x * x
  xCubed: new Float32Array(QK_K), // Q6_K: w * x
  subScales: new Float32Array(Q6_K_SUBS), // scale per sub-block
  subMins: new Float32Array(Q4_K_SUBS), // Q4_K's the_min per sub-block
  /** Lists of sub-block indices: still searching; whose candidate levels changed; D > 0. And
   * a flag per sub-block: its candidate levels changed in this step. */
  active: new Uint8Array(Q6_K_SUBS),
  changed: new Uint8Array(Q4_K_SUBS),
  candidates: new Uint8Array(Q4_K_SUBS),
  isChanged: new Uint8Array(Q4_K_SUBS),
  /** Per-sub-block floats of the searches, named after C's locals. */
  min: new Float32Array(Q4_K_SUBS),
  max: new Float32Array(Q6_K_SUBS),
  sumW: new Float32Array(Q4_K_SUBS),
  sumX: new Float32Array(Q4_K_SUBS),
  iscale: new Float32Array(Q6_K_SUBS),
  best: new Float32Array(Q6_K_SUBS),
  sumL: new Float32Array(Q4_K_SUBS),
  sumL2: new Float32Array(Q6_K_SUBS),
  sumXL: new Float32Array(Q6_K_SUBS),
  thisScale: new Float32Array(Q4_K_SUBS),
  thisMin: new Float32Array(Q4_K_SUBS),
  error: new Float32Array(Q4_K_SUBS),
};

/** C's MAX(lo, MIN(hi, l)). */
function clamp(l: number, lo: number, hi: number): number {
  return l < lo ? lo : l > hi ? hi : l;
}

/**
 * make_qkx2_quants(32, nmax, x, weights, L, &the_min, Laux, rmin, rdelta, nstep, use_mad = false)
 * for each of Q4_K's 8 sub-blocks: levels 0..nmax and a scale and min (x ~ scale * L - the_min)
 * minimising the weighted squared error. Starts from [min(x, 0), max(x)] mapped onto 0..nmax,
 * then tries nstep + 1 iscales (rmin + rdelta * is + nmax) / (max - min), each refined by
 * weighted least squares for scale and min, keeping the best (and measuring the next range from
 * the best min so far, as C does). Levels go to scratch.levels, scales to subScales, the_min to
 * subMins.
 */
function makeQkx2Quants(
  x: Float32Array,
  xo: number,
  nmax: number,
  rmin: number,
  rdelta: number,
  nstep: number,
): void {
  const { levels, levelsAux, weights, xMinusMin, subScales, subMins } = scratch;
  const { active, changed, candidates, isChanged, min: sMin, max: sMax, sumW: sSumW, sumX: sSumX } =
    scratch;
  const { iscale: sIscale, best: sBest, sumL: sSumL, sumL2: sSumL2, sumXL: sSumXL } = scratch;
  const { thisScale: sThisScale, thisMin: sThisMin, error: sError } = scratch;
  const n = Q4_K_SUB;
  let nActive = 0;
  for (let j = 0; j < Q4_K_SUBS; j++) {
    const e0 = n * j, o = xo + e0;
    let min = x[o], max = x[o];
    let sumW = weights[e0];
    let sumX = f32(sumW * x[o]);
    for (let i = 1; i < n; i++) {
      const v = x[o + i];
      if (v < min) min = v;
      if (v > max) max = v;
      sumW = f32(sumW + weights[e0 + i]);
      sumX = f32(sumX + f32(weights[e0 + i] * v));
    }
    if (min > 0) min = 0;
    if (max === min) { // a constant sub-block (<= 0): all levels 0, the_min = -min, scale 0
      levels.fill(0, e0, e0 + n);
      subMins[j] = -min;
      subScales[j] = 0;
      continue;
    }
    const iscale = f32(nmax / f32(max - min));
    const scale = f32(1 / iscale);
    let bestError = 0;
    for (let i = 0; i < n; i++) {
      const xm = f32(x[o + i] - min);
      xMinusMin[e0 + i] = xm;
      const l = clamp(nearestInt(f32(iscale * xm)), 0, nmax);
      levels[e0 + i] = l;
      const diff = f32(f32(f32(scale * l) + min) - x[o + i]);
      bestError = f32(bestError + f32(weights[e0 + i] * f32(diff * diff)));
    }
    sMin[j] = min;
    sMax[j] = max;
    sSumW[j] = sumW;
    sSumX[j] = sumX;
    subScales[j] = scale;
    sBest[j] = bestError;
    active[nActive++] = j;
  }
  for (let is = 0; nstep >= 1 && is <= nstep; is++) { // C keeps the first guess when nstep < 1
    // Candidate levels. A sub-block whose levels equal its previous step's needs no more work:
    // all that follows is a function of the levels (and x, w), so it would give the previous
    // step's error, which cannot beat the best so far. Skipping it is exact.
    const top = f32(f32(rmin + f32(rdelta * is)) + nmax);
    for (let k = 0; k < nActive; k++) {
      const j = active[k];
      sIscale[j] = f32(top / f32(sMax[j] - sMin[j]));
      isChanged[j] = is === 0 ? 1 : 0;
    }
    for (let i = 0; i < n; i++) {
      for (let k = 0; k < nActive; k++) {
        const j = active[k], e = n * j + i;
        const l = clamp(nearestInt(f32(sIscale[j] * xMinusMin[e])), 0, nmax);
        if (l !== levelsAux[e]) {
          levelsAux[e] = l;
          isChanged[j] = 1;
        }
      }
    }
    let nChanged = 0;
    for (let k = 0; k < nActive; k++) {
      const j = active[k];
      if (isChanged[j] === 0) continue;
      changed[nChanged++] = j;
      sSumL[j] = sSumL2[j] = sSumXL[j] = 0;
    }
    // Weighted sums of the candidate levels.
    for (let i = 0; i < n; i++) {
      for (let k = 0; k < nChanged; k++) {
        const j = changed[k], e = n * j + i;
        const l = levelsAux[e];
        const wl = f32(weights[e] * l);
        sSumL[j] += wl;
        sSumL2[j] += f32(wl * l);
        sSumXL[j] += f32(wl * x[xo + e]);
      }
    }
    // Least-squares scale and min where the system is solvable (D > 0).
    let nCandidates = 0;
    for (let k = 0; k < nChanged; k++) {
      const j = changed[k];
      const sumW = sSumW[j], sumX = sSumX[j], sumL = sSumL[j], sumL2 = sSumL2[j];
      const sumXL = sSumXL[j];
      const det = f32(f32(sumW * sumL2) - f32(sumL * sumL));
      if (!(det > 0)) continue;
      let thisScale = f32(f32(f32(sumW * sumXL) - f32(sumX * sumL)) / det);
      let thisMin = f32(f32(f32(sumL2 * sumX) - f32(sumL * sumXL)) / det);
      if (thisMin > 0) {
        thisMin = 0;
        thisScale = f32(sumXL / sumL2);
      }
      sThisScale[j] = thisScale;
      sThisMin[j] = thisMin;
      sError[j] = 0;
      candidates[nCandidates++] = j;
    }
    // Their weighted squared errors; keep a candidate that beats its sub-block's best.
    for (let i = 0; i < n; i++) {
      for (let k = 0; k < nCandidates; k++) {
        const j = candidates[k], e = n * j + i;
        const diff = f32(f32(f32(sThisScale[j] * levelsAux[e]) + sThisMin[j]) - x[xo + e]);
        sError[j] += f32(weights[e] * f32(diff * diff));
      }
    }
    for (let k = 0; k < nCandidates; k++) {
      const j = candidates[k];
      if (!(sError[j] < sBest[j])) continue;
      const e0 = n * j, min = sThisMin[j];
      for (let i = 0; i < n; i++) {
        levels[e0 + i] = levelsAux[e0 + i];
        xMinusMin[e0 + i] = f32(x[xo + e0 + i] - min);
      }
      sBest[j] = sError[j];
      subScales[j] = sThisScale[j];
      sMin[j] = min;
    }
  }
  for (let k = 0; k < nActive; k++) subMins[active[k]] = -sMin[active[k]];
}

/** quantize_row_q4_K_ref: per sub-block of 32, weights av_x + |x| (av_x the sub-block's RMS) and
 * make_qkx2_quants; the 8 scales and 8 mins quantized to 6 bits against their maxima (d =
 * max_scale / 63, dmin = max_min / 63); then every value requantized with the stored scales. */
function quantizeQ4_KBlock(x: Float32Array, xo: number, out: Uint8Array, oo: number): void {
  const { levels, weights, subScales, subMins } = scratch;
  for (let j = 0; j < Q4_K_SUBS; j++) {
    const o = xo + Q4_K_SUB * j;
    let sumX2 = 0;
    for (let l = 0; l < Q4_K_SUB; l++) sumX2 = f32(sumX2 + f32(x[o + l] * x[o + l]));
    const avX = f32(Math.sqrt(f32(sumX2 / Q4_K_SUB)));
    for (let l = 0; l < Q4_K_SUB; l++) weights[Q4_K_SUB * j + l] = avX + Math.abs(x[o + l]);
  }
  makeQkx2Quants(x, xo, Q4_K_NMAX, Q4_K_RMIN, Q4_K_RDELTA, Q4_K_NSTEP);
  let maxScale = 0, maxMin = 0;
  for (let j = 0; j < Q4_K_SUBS; j++) {
    if (subScales[j] > maxScale) maxScale = subScales[j];
    if (subMins[j] > maxMin) maxMin = subMins[j];
  }

  const invScale = maxScale > 0 ? f32(Q4_K_SCALE_MAX / maxScale) : 0;
  const invMin = maxMin > 0 ? f32(Q4_K_SCALE_MAX / maxMin) : 0;
  const sc = oo + Q4_K_SCALES;
  for (let j = 0; j < Q4_K_SUBS; j++) {
    // uint8_t ls = nearest_int(...): the int's low byte, then MIN(63, ls).
    const ls = Math.min(Q4_K_SCALE_MAX, nearestInt(f32(invScale * subScales[j])) & 0xff);
    const lm = Math.min(Q4_K_SCALE_MAX, nearestInt(f32(invMin * subMins[j])) & 0xff);
    if (j < 4) {
      out[sc + j] = ls;
      out[sc + j + 4] = lm;
    } else {
      out[sc + j + 4] = (ls & 0xf) | ((lm & 0xf) << 4);
      out[sc + j - 4] |= (ls >> 4) << 6;
      out[sc + j] |= (lm >> 4) << 6;
    }
  }
  const dBits = f32ToF16(f32(maxScale / Q4_K_SCALE_MAX));
  const dminBits = f32ToF16(f32(maxMin / Q4_K_SCALE_MAX));
  writeF16(out, oo + Q4_K_D, dBits);
  writeF16(out, oo + Q4_K_DMIN, dminBits);

  // Requantize with the stored scales; a sub-block whose 6-bit scale is 0 keeps
  // make_qkx2_quants' levels (C's `if (!d) continue;`).
  const dAll = f16ToF32(dBits), dminAll = f16ToF32(dminBits);
  for (let j = 0; j < Q4_K_SUBS; j++) {
    const d = f32(dAll * q4KScale(out, sc, j));
    if (d === 0) continue;
    const dm = f32(dminAll * q4KMin(out, sc, j));
    const o = xo + Q4_K_SUB * j;
    for (let i = 0; i < Q4_K_SUB; i++) {
      const l = nearestInt(f32(f32(x[o + i] + dm) / d));
      levels[Q4_K_SUB * j + i] = clamp(l, 0, Q4_K_NMAX);
    }
  }

  // Pack: per 64 values, byte l holds value l in its low nibble and value l + 32 in its high.
  for (let c = 0; c < QK_K / 64; c++) {
    const q = oo + Q4_K_QS + 32 * c;
    for (let l = 0; l < 32; l++) out[q + l] = levels[64 * c + l] | (levels[64 * c + l + 32] << 4);
  }
}

/**
 * make_qx_quants(16, nmax, x, L, rmse_type = 1, qw = NULL), the form quantize_row_q6_K_ref calls,
 * for each of Q6_K's 16 sub-blocks: symmetric levels -nmax..nmax-1 (stored + nmax) from iscale =
 * -nmax / max (max the value of largest magnitude), then 18 nearby iscales -(nmax + 0.1 * is) /
 * max, keeping the one of best x^2-weighted least-squares fit. Levels go to levels[], scales
 * (negative when max is positive) to subScales[].
 */
function makeQxQuants(x: Float32Array, xo: number, nmax: number): void {
  const { levels, xSquared, xCubed, subScales, active, max: sMax, iscale: sIscale } = scratch;
  const { best: sBest, sumL2: sSumL2, sumXL: sSumXL } = scratch;
  const n = Q6_K_SUB;
  let nActive = 0;
  for (let j = 0; j < Q6_K_SUBS; j++) {
    const o = xo + n * j;
    let amax = 0, max = 0;
    for (let i = 0; i < n; i++) {
      const ax = Math.abs(x[o + i]);
      if (ax > amax) {
        amax = ax;
        max = x[o + i];
      }
    }
    if (amax < GROUP_MAX_EPS) { // all zero: levels 0 (not nmax), scale 0
      levels.fill(0, n * j, n * j + n);
      subScales[j] = 0;
      continue;
    }
    sMax[j] = max;
    sIscale[j] = f32(-nmax / max);
    sSumXL[j] = sSumL2[j] = 0;
    active[nActive++] = j;
  }
  for (let e = 0; e < QK_K; e++) {
    xSquared[e] = x[xo + e] * x[xo + e]; // float w = x[i] * x[i] (rmse_type 1)
    xCubed[e] = xSquared[e] * x[xo + e]; // w * x[i], the first product of w*x[i]*l
  }
  for (let i = 0; i < n; i++) {
    for (let k = 0; k < nActive; k++) {
      const j = active[k], e = n * j + i;
      const l = clamp(nearestInt(f32(sIscale[j] * x[xo + e])), -nmax, nmax - 1);
      levels[e] = l + nmax;
      sSumXL[j] += f32(xCubed[e] * l);
      sSumL2[j] += f32(f32(xSquared[e] * l) * l);
    }
  }
  for (let k = 0; k < nActive; k++) {
    const j = active[k];
    const scale = sSumL2[j] !== 0 ? f32(sSumXL[j] / sSumL2[j]) : 0;
    subScales[j] = scale;
    sBest[j] = f32(scale * sSumXL[j]);
  }
  for (let is = -9; is <= 9; is++) {
    if (is === 0) continue;
    const top = f32(nmax + f32(TENTH * is));
    for (let k = 0; k < nActive; k++) {
      const j = active[k];
      sIscale[j] = f32(-top / sMax[j]);
      sSumXL[j] = sSumL2[j] = 0;
    }
    for (let i = 0; i < n; i++) {
      for (let k = 0; k < nActive; k++) {
        const j = active[k], e = n * j + i;
        const l = clamp(nearestInt(f32(sIscale[j] * x[xo + e])), -nmax, nmax - 1);
        sSumXL[j] += f32(xCubed[e] * l);
        sSumL2[j] += f32(f32(xSquared[e] * l) * l);
      }
    }
    for (let k = 0; k < nActive; k++) {
      const j = active[k];
      const sumLX = sSumXL[j], sumL2 = sSumL2[j];
      if (!(sumL2 > 0 && f32(sumLX * sumLX) > f32(sBest[j] * sumL2))) continue;
      for (let i = 0; i < n; i++) {
        const e = n * j + i;
        levels[e] = nmax + clamp(nearestInt(f32(sIscale[j] * x[xo + e])), -nmax, nmax - 1);
      }
      const scale = f32(sumLX / sumL2);
      subScales[j] = scale;
      sBest[j] = f32(scale * sumLX);
    }
  }
}

/** quantize_row_q6_K_ref: make_qx_quants per 16 values; the 16 scales as int8 against the one of
 * largest magnitude (mapped to -128, d = 1 / iscale); then every value requantized with the
 * stored scales to -32..31 and stored + 32 as 4 low bits (ql) and 2 high bits (qh). */
function quantizeQ6_KBlock(x: Float32Array, xo: number, out: Uint8Array, oo: number): void {
  const { levels, subScales } = scratch;
  makeQxQuants(x, xo, Q6_K_NMAX);
  let maxScale = 0, maxAbsScale = 0;
  for (let ib = 0; ib < Q6_K_SUBS; ib++) {
    if (Math.abs(subScales[ib]) > maxAbsScale) {
      maxAbsScale = Math.abs(subScales[ib]);
      maxScale = subScales[ib];
    }
  }
  if (maxAbsScale < GROUP_MAX_EPS) {
    out.fill(0, oo, oo + QUANT_FORMATS.Q6_K.bytes); // memset, and d = f16(0)
    return;
  }

  const iscale = f32(Q6_K_SCALE_NEG / maxScale);
  const dBits = f32ToF16(f32(1 / iscale));
  writeF16(out, oo + Q6_K_D, dBits);
  const sc = oo + Q6_K_SCALES;
  for (let ib = 0; ib < Q6_K_SUBS; ib++) {
    out[sc + ib] = Math.min(Q6_K_SCALE_TOP, nearestInt(f32(iscale * subScales[ib]))) & 0xff;
  }

  // Requantize; a sub-block whose int8 scale is 0 keeps make_qx_quants' levels.
  const dAll = f16ToF32(dBits);
  for (let j = 0; j < Q6_K_SUBS; j++) {
    const d = f32(dAll * asInt8(out[sc + j]));
    if (d === 0) continue;
    const o = xo + Q6_K_SUB * j;
    for (let i = 0; i < Q6_K_SUB; i++) {
      const l = nearestInt(f32(x[o + i] / d));
      levels[Q6_K_SUB * j + i] = clamp(l, -Q6_K_NMAX, Q6_K_NMAX - 1) + Q6_K_NMAX;
    }
  }

  // Pack per 128 values: ql[l] = low nibbles of l | l+64, ql[l+32] = of l+32 | l+96; qh[l] = top
  // 2 bits of l, l+32, l+64, l+96 at bits 0, 2, 4, 6.
  for (let c = 0; c < QK_K / 128; c++) {
    const ql = oo + Q6_K_QL + 64 * c, qh = oo + Q6_K_QH + 32 * c, L = 128 * c;
    for (let l = 0; l < 32; l++) {
      const l1 = levels[L + l], l2 = levels[L + l + 32];
      const l3 = levels[L + l + 64], l4 = levels[L + l + 96];
      out[ql + l] = (l1 & 0xf) | ((l3 & 0xf) << 4);
      out[ql + l + 32] = (l2 & 0xf) | ((l4 & 0xf) << 4);
      out[qh + l] = (l1 >> 4) | ((l2 >> 4) << 2) | ((l3 >> 4) << 4) | ((l4 >> 4) << 6);
    }
  }
}

type QuantizeBlock = (x: Float32Array, xo: number, out: Uint8Array, oo: number) => void;

const QUANTIZE_BLOCK: Record<QuantType, QuantizeBlock> = {
  Q8_0: quantizeQ8_0Block,
  Q4_0: quantizeQ4_0Block,
  Q5_0: quantizeQ5_0Block,
  Q4_K: quantizeQ4_KBlock,
  Q6_K: quantizeQ6_KBlock,
};

/** `rows` row-major rows of `cols` f32 values as `type` blocks: rows * quantRowBytes(type, cols)
 * bytes, exactly GGML's. Throws RangeError when cols is not whole blocks or values is not rows *
 * cols long. */
export function quantizeRows(
  type: QuantType,
  values: Float32Array,
  rows: number,
  cols: number,
): Uint8Array<ArrayBuffer> {
  const rowBytes = quantRowBytes(type, cols);
  if (!Number.isInteger(rows) || rows < 0 || values.length !== rows * cols) {
    throw new RangeError(
      `${rows} rows of ${cols} values are ${rows * cols} values; got ${values.length}`,
    );
  }
  const { elems, bytes } = QUANT_FORMATS[type];
  const block = QUANTIZE_BLOCK[type];
  const out = new Uint8Array(rows * rowBytes);
  const blocks = (rows * cols) / elems;
  for (let i = 0; i < blocks; i++) block(values, i * elems, out, i * bytes);
  return out;
}
