/**
 * GGML block quantization (src/quant/quantize.ts, src/quant/dequantize.ts) against llama.cpp's
 * ggml-quants.c. Per type: (a) a block worked out by hand from the C definition, (b) round-trip
 * error bounds on random rows, (c) dequantization of hand-built bytes, (d) quantize(dequantize(q))
 * == q where that holds, (e) edge cases. Then digests of bytes produced by the C reference itself
 * (quantize_row_*_ref and dequantize_row_* from ggml-quants.c at llama.cpp commit 01243c58,
 * compiled with gcc -O2 for x86-64, which is how ggml-base is built: no FMA).
 */
import assert from "node:assert/strict";
import { f16ToF32 } from "../src/dtype.ts";
import { dequantizeRows, q4KScale } from "../src/quant/dequantize.ts";
import { QUANT_FORMATS, QUANT_TYPES, type QuantType } from "../src/quant/formats.ts";
import { quantizeRows } from "../src/quant/quantize.ts";

/** Bytes as "00 3c 7f ..." (how the expectations below are written). */
function hex(bytes: Uint8Array): string {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join(" ");
}

/** "00 3c" repeated n times, joined by spaces. */
function times(pattern: string, n: number): string {
  return Array(n).fill(pattern).join(" ");
}

/** A little-endian f16 read as a number. */
function f16At(b: Uint8Array, o: number): number {
  return f16ToF32(b[o] | (b[o + 1] << 8));
}

/** Mulberry32: a small deterministic generator of uniforms in [0, 1) (arithmetic only, so the
 * same numbers on every platform). */
function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = Math.imul(a ^ (a >>> 15), 1 | a);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Roughly normal values (sum of four uniforms, centred), times scale; 1% outliers when asked. */
function randomRows(n: number, seed: number, scale: number, outliers = false): Float32Array {
  const u = mulberry32(seed);
  const x = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    const g = u() + u() + u() + u() - 2;
    x[i] = g * scale * (outliers && u() < 0.01 ? 40 : 1);
  }
  return x;
}

const Q8_0_BLOCK = QUANT_FORMATS.Q8_0.elems, K_BLOCK = QUANT_FORMATS.Q4_K.elems;
/** f16 relative rounding error (10-bit mantissa, normal range). */
const F16_EPS = 2 ** -11;

// ---------------------------------------------------------------------------------------------
// Q8_0: f16 d = amax / 127, int8 q = roundf(x / d)

Deno.test("quantizeRows() Q8_0: amax 127 gives d = 1 and roundf rounds halves away from zero", () => {
  // amax = 127, so d = 127/127 = 1 (f16 0x3c00, bytes 00 3c) and id = 1: q = roundf(x).
  // roundf(2.5) = 3, roundf(-2.5) = -3 (away from zero; Math.round gives -2), roundf(0.5) = 1,
  // roundf(126.5) = 127, roundf(-3.75) = -4, and 0.49999997 (0.5 - 2^-25) rounds to 0 even though
  // 0.49999997f + 0.5f is 1.0f in f32: roundf does not add 0.5 in float.
  const head = [127, -127, 2.5, -2.5, 0.5, -0.5, 1.5, -1.5, 126.5, -126.5, 3.25, -3.75];
  const x = Float32Array.from([...head, 0.49999997, 100, -64, 7, ...Array(16).keys()]);
  const q = "7f 81 03 fd 01 ff 02 fe 7f 81 03 fc 00 64 c0 07"; // int8 bytes of the first 16
  const tail = "00 01 02 03 04 05 06 07 08 09 0a 0b 0c 0d 0e 0f"; // x = 0..15 -> q = x
  assert.equal(hex(quantizeRows("Q8_0", x, 1, 32)), `00 3c ${q} ${tail}`);
});

Deno.test("quantizeRows() Q8_0 of [0..31] * 0.1: d = f16(3.1 / 127), q = round(j * 127 / 31)", () => {
  // amax = 3.1f, d = 3.1f / 127 = 0.0244094...; as f16: 2^-6 * 1.5622 -> exponent 9, mantissa
  // 0.5622 * 1024 = 575.7 -> 576 = 0x240: d = 0x2640 (bytes 40 26). q uses the f32 id = 127 / 3.1,
  // so q_j = roundf(j * 4.0968) (no fraction lands within 0.016 of .5, so f32 cannot tip one):
  // 0 4 8 12 16 20 25 29 33 37 41 45 49 53 57 61 66 70 74 78 82 86 90 94 98 102 107 111 115 119
  // 123 127.
  const x = Float32Array.from({ length: 32 }, (_, j) => j / 10);
  const q = [0, 4, 8, 12, 16, 20, 25, 29, 33, 37, 41, 45, 49, 53, 57, 61, 66, 70, 74, 78, 82, 86];
  q.push(90, 94, 98, 102, 107, 111, 115, 119, 123, 127);
  assert.equal(hex(quantizeRows("Q8_0", x, 1, 32)), `40 26 ${hex(Uint8Array.from(q))}`);
});

Deno.test("dequantizeRows() Q8_0 of hand-built blocks gives d * q", () => {
  // d = 0x3800 = 0.5; q = -128, -1, 0, 1, 127, then 27 zeros. Second block d = 0xb800 = -0.5:
  // q = 2 -> -1, q = 0 -> -0 (0 * -0.5 is -0 in C too).
  const block1 = "00 38 80 ff 00 01 7f " + times("00", 27);
  const block2 = "00 b8 02 " + times("00", 31);
  const bytes = Uint8Array.from(`${block1} ${block2}`.split(" "), (h) => parseInt(h, 16));
  const y = Array.from(dequantizeRows("Q8_0", bytes, 2, 32));
  assert.deepEqual(y.slice(0, 5), [-64, -0.5, 0, 0.5, 63.5]);
  assert.deepEqual(y.slice(32, 34), [-1, -0]);
  assert.ok(Object.is(y[33], -0));
});

Deno.test("quantizeRows() Q8_0 round trip is within d/2 + 127 * (f16 error of d)", () => {
  // q is rounded against the f32 d = amax/127: |x - q*d| <= d/2. Storing d as f16 moves each
  // value by |q| * |d - f16(d)| <= 127 * d * 2^-11. So |x - deq| <= d * (0.5 + 127 * 2^-11) plus
  // f32 roundings (~2^-22 relative): bound d * 0.5625.
  const rows = 16, cols = 512;
  const x = randomRows(rows * cols, 1, 1, true);
  const y = dequantizeRows("Q8_0", quantizeRows("Q8_0", x, rows, cols), rows, cols);
  for (let b = 0; b < x.length; b += Q8_0_BLOCK) {
    let amax = 0;
    for (let i = 0; i < Q8_0_BLOCK; i++) amax = Math.max(amax, Math.abs(x[b + i]));
    const bound = (amax / 127) * (0.5 + 127 * F16_EPS + 2 ** -20);
    for (let i = 0; i < Q8_0_BLOCK; i++) {
      assert.ok(
        Math.abs(x[b + i] - y[b + i]) <= bound,
        `value ${b + i}: ${x[b + i]} -> ${y[b + i]}`,
      );
    }
  }
});

// ---------------------------------------------------------------------------------------------
// Q4_0: f16 d = max / -8 (max: the signed value of largest magnitude),
// q = min(15, trunc(x/d + 8.5))

Deno.test("quantizeRows() Q4_0: d = max / -8, q = trunc(x / d + 8.5) clamped to 15, nibble pairs", () => {
  // x_j = j/2 - 8 (-8, -7.5, ..., 7.5): max = -8 (j = 0), d = -8 / -8 = 1 (00 3c), id = 1.
  // q_j = trunc(j/2 + 0.5): j even -> j/2, odd -> (j+1)/2 (halves round up: -7.5 -> q 1 -> -7),
  // and j = 31 gives 16 -> clamped to 15. Byte j = q_j | q_{j+16} << 4:
  //   q_0..15  = 0 1 1 2 2 3 3 4 4 5 5 6 6 7 7 8
  //   q_16..31 = 8 9 9 10 10 11 11 12 12 13 13 14 14 15 15 15
  const x = Float32Array.from({ length: 32 }, (_, j) => j / 2 - 8);
  const qs = "80 91 91 a2 a2 b3 b3 c4 c4 d5 d5 e6 e6 f7 f7 f8";
  assert.equal(hex(quantizeRows("Q4_0", x, 1, 32)), `00 3c ${qs}`);
  // Negated, max = +8 and d = -1 (00 bc): x/d is unchanged, so are the levels.
  const neg = x.map((v) => -v);
  assert.equal(hex(quantizeRows("Q4_0", neg, 1, 32)), `00 bc ${qs}`);
});

Deno.test("dequantizeRows() Q4_0 of a hand-built block gives d * (nibble - 8)", () => {
  // d = 0xc000 = -2; byte 0 = 0x0f: value 0 = (15 - 8) * -2 = -14, value 16 = (0 - 8) * -2 = 16;
  // byte 1 = 0x88: values 1 and 17 = 0 * -2 = -0; the rest 0x00: (0 - 8) * -2 = 16.
  const bytes = Uint8Array.from([0x00, 0xc0, 0x0f, 0x88, ...Array(14).fill(0)]);
  const y = Array.from(dequantizeRows("Q4_0", bytes, 1, 32));
  assert.deepEqual(y.slice(0, 3), [-14, -0, 16]);
  assert.deepEqual(y.slice(16, 19), [16, -0, 16]);
});

Deno.test("quantizeRows() Q4_0 round trip is within one step |d| (half a step but at the clamp)", () => {
  // |x/d - (q - 8)| <= 1/2, except where x/d >= 7.5 and q is clamped at 15 (x/d <= 8): <= 1.
  // The f16 d adds <= 8 * |d| * 2^-11. Bound: |d| * (1 + 8 * 2^-11 + 2^-20), |d| = amax / 8.
  const rows = 16, cols = 512;
  const x = randomRows(rows * cols, 2, 1, true);
  const y = dequantizeRows("Q4_0", quantizeRows("Q4_0", x, rows, cols), rows, cols);
  let sumErr = 0, sumStep = 0;
  for (let b = 0; b < x.length; b += Q8_0_BLOCK) {
    let amax = 0;
    for (let i = 0; i < Q8_0_BLOCK; i++) amax = Math.max(amax, Math.abs(x[b + i]));
    const step = amax / 8;
    for (let i = 0; i < Q8_0_BLOCK; i++) {
      const err = Math.abs(x[b + i] - y[b + i]);
      assert.ok(err <= step * (1 + 8 * F16_EPS + 2 ** -20), `value ${b + i}`);
      sumErr += err;
      sumStep += step;
    }
  }
  // Rounding to nearest: the mean error is about a quarter step, far from the worst case.
  assert.ok(sumErr / sumStep < 0.3, `mean error ${sumErr / sumStep} steps`);
});

// ---------------------------------------------------------------------------------------------
// Q5_0: as Q4_0 with 5-bit levels: d = max / -16, q = min(31, trunc(x/d + 16.5)), bit 4 in qh

Deno.test("quantizeRows() Q5_0: d = max / -16, low nibbles in qs, 5th bits in the u32 qh", () => {
  // x_j = j - 16: max = -16, d = 1 (00 3c), q_j = trunc(j + 0.5) = j. Byte j of qs =
  // (q_j & 15) | (q_{j+16} & 15) << 4 = j * 0x11; q_j < 16 for j < 16 and >= 16 after, so qh =
  // 0xffff0000 (bytes 00 00 ff ff).
  const x = Float32Array.from({ length: 32 }, (_, j) => j - 16);
  const qs = "00 11 22 33 44 55 66 77 88 99 aa bb cc dd ee ff";
  assert.equal(hex(quantizeRows("Q5_0", x, 1, 32)), `00 3c 00 00 ff ff ${qs}`);
  // x_j = 16 - j: max = +16, d = -1 (00 bc), x/d = j - 16 again: same levels.
  const neg = Float32Array.from({ length: 32 }, (_, j) => 16 - j);
  assert.equal(hex(quantizeRows("Q5_0", neg, 1, 32)), `00 bc 00 00 ff ff ${qs}`);
});

Deno.test("dequantizeRows() Q5_0 of a hand-built block takes bit j of qh as value j's 5th bit", () => {
  // d = 1; qh = 0x80000001: values 0 and 31 have the 5th bit; qs all 0. Value 0 = (0|16) - 16
  // = 0, value 31 = 0, every other value (0 - 16) * 1 = -16.
  const bytes = Uint8Array.from([0x00, 0x3c, 0x01, 0x00, 0x00, 0x80, ...Array(16).fill(0)]);
  const y = Array.from(dequantizeRows("Q5_0", bytes, 1, 32));
  const expected = Array(32).fill(-16);
  expected[0] = expected[31] = 0;
  assert.deepEqual(y, expected);
});

Deno.test("quantizeRows() Q5_0 round trip is within one step |d| = amax / 16", () => {
  // As Q4_0: half a step, one step at the clamp (q = 32 -> 31), plus 16 * |d| * 2^-11 for f16.
  const rows = 16, cols = 512;
  const x = randomRows(rows * cols, 3, 1, true);
  const y = dequantizeRows("Q5_0", quantizeRows("Q5_0", x, rows, cols), rows, cols);
  for (let b = 0; b < x.length; b += Q8_0_BLOCK) {
    let amax = 0;
    for (let i = 0; i < Q8_0_BLOCK; i++) amax = Math.max(amax, Math.abs(x[b + i]));
    const bound = (amax / 16) * (1 + 16 * F16_EPS + 2 ** -20);
    for (let i = 0; i < Q8_0_BLOCK; i++) {
      assert.ok(Math.abs(x[b + i] - y[b + i]) <= bound, `value ${b + i}`);
    }
  }
});

// ---------------------------------------------------------------------------------------------
// Q4_K: 8 sub-blocks of 32, x = d*sc*q - dmin*m with 6-bit sc, m (make_qkx2_quants)

/** Q4_K hand block: even sub-blocks hold t = i % 16 (0..15), odd ones 7 - t (7..-8). */
function q4KHandBlock(): Float32Array {
  return Float32Array.from({ length: 256 }, (_, n) => ((n >> 5) % 2 === 0 ? n % 16 : 7 - (n % 16)));
}

Deno.test("quantizeRows() Q4_K: exact scales and mins pack into 6 bits, nibbles pair l and l+32", () => {
  // make_qkx2_quants(32, 15, ...): even sub-block: min = 0, max = 15, iscale = 15/15 = 1, L = x,
  // error 0 (the search only takes a strictly smaller error, so it stays): scale 1, the_min = -0.
  // Odd: min = -8, max = 7, iscale = 1, L = x + 8 = 15 - t, error 0: scale 1, the_min = 8.
  // max_scale = 1, max_min = 8: ls = nearest(63/1 * 1) = 63 for all; lm = nearest(63/8 * 8) = 63
  // for odd j, nearest(63/8 * -0) = 0 for even.
  // d = f16(1/63 = 0.015873) = 2^-6 * (1 + 16.25/1024) -> 0x2410 (10 24); dmin = f16(8/63 =
  // 0.126984) = 2^-3 * (1 + 16.25/1024) -> 0x3010 (10 30).
  // scales[12]: j < 4: byte j = ls = 63, byte j+4 = lm; j >= 4: byte j+4 = (ls & 15) | (lm & 15)
  // << 4, byte j-4 |= (ls >> 4) << 6 = 0xc0, byte j |= (lm >> 4) << 6:
  //   bytes 0-3: 63 | 0xc0 = ff; bytes 4-7: lm_0..3 | (lm_4..7 >> 4) << 6 = 00 ff 00 ff;
  //   bytes 8-11: 0x0f | (lm_4..7 & 15) << 4 = 0f ff 0f ff.
  // Requantized with d*sc = 0.999755859375 (65520/65536) and dmin*m = 0 or 7.998046875:
  // (x + dm) / (d*sc) is within 0.01 of L, so L is unchanged. Bytes of qs, per 64 values: byte l =
  // L_even(l) | L_odd(l) << 4 = t | (15 - t) << 4 for t = l % 16: f0 e1 d2 ... 1e 0f.
  const qs = times("f0 e1 d2 c3 b4 a5 96 87 78 69 5a 4b 3c 2d 1e 0f", 8);
  const expected = `10 24 10 30 ff ff ff ff 00 ff 00 ff 0f ff 0f ff ${qs}`;
  assert.equal(hex(quantizeRows("Q4_K", q4KHandBlock(), 1, 256)), expected);
});

Deno.test("dequantizeRows() Q4_K of a hand-built block: 6-bit scales/mins of sub-blocks 4-7", () => {
  // d = 1 (00 3c), dmin = 0.5 (00 38); sc = 1 2 3 4 17 33 49 63, m = 0 1 2 3 20 40 60 5.
  // bytes 0-3 = sc_0..3 | (sc_4..7 >> 4) << 6 = 41 82 c3 c4
  // bytes 4-7 = m_0..3 | (m_4..7 >> 4) << 6  = 40 81 c2 03
  // bytes 8-11 = (sc_4..7 & 15) | (m_4..7 & 15) << 4 = 41 81 c1 5f
  // qs all 0x5a: sub-blocks 0, 2, 4, 6 read the low nibble 10, 1, 3, 5, 7 the high nibble 5.
  // x = d*sc*q - dmin*m: 10, 2*5 - 0.5 = 9.5, 30 - 1 = 29, 20 - 1.5 = 18.5, 170 - 10 = 160,
  // 165 - 20 = 145, 490 - 30 = 460, 315 - 2.5 = 312.5.
  const head = [0x00, 0x3c, 0x00, 0x38, 0x41, 0x82, 0xc3, 0xc4, 0x40, 0x81, 0xc2, 0x03];
  const bytes = Uint8Array.from([...head, 0x41, 0x81, 0xc1, 0x5f, ...Array(128).fill(0x5a)]);
  const y = dequantizeRows("Q4_K", bytes, 1, 256);
  const perSub = [10, 9.5, 29, 18.5, 160, 145, 460, 312.5];
  assert.deepEqual(Array.from(y), perSub.flatMap((v) => Array(32).fill(v)));
});

/** Largest step d * sc (absolute) of a K-quant super-block at byte o. */
function kMaxStep(type: "Q4_K" | "Q6_K", q: Uint8Array, o: number): number {
  let step = 0;
  if (type === "Q4_K") {
    const d = f16At(q, o);
    for (let j = 0; j < 8; j++) step = Math.max(step, Math.abs(d * q4KScale(q, o + 4, j)));
  } else {
    const d = f16At(q, o + 208);
    for (let j = 0; j < 16; j++) {
      step = Math.max(step, Math.abs(d * ((q[o + 192 + j] << 24) >> 24)));
    }
  }
  return step;
}

for (const type of ["Q4_K", "Q6_K"] as const) {
  Deno.test(`quantizeRows() ${type} round trip is within the super-block's largest step`, () => {
    // A value in its own sub-block's range is within half that sub-block's step; the fitted
    // scales can leave the largest values of a sub-block outside its grid (Q6_K's levels stop
    // at +31, the 6-bit scales are rounded), which costs more, but on normal and outlier-heavy
    // rows the error stays below the super-block's largest step d * max|sc| (observed: 0.83 of
    // it for Q4_K, 0.54 for Q6_K). Not a theorem: a guard against regressions.
    const rows = 32, cols = 1024, bytesPer = QUANT_FORMATS[type].bytes;
    for (const [seed, outliers] of [[4, false], [5, true]] as const) {
      const x = randomRows(rows * cols, seed, 0.05, outliers);
      const q = quantizeRows(type, x, rows, cols);
      const y = dequantizeRows(type, q, rows, cols);
      for (let b = 0; b < x.length / K_BLOCK; b++) {
        const step = kMaxStep(type, q, b * bytesPer);
        for (let i = b * K_BLOCK; i < (b + 1) * K_BLOCK; i++) {
          assert.ok(Math.abs(x[i] - y[i]) <= step, `value ${i}: ${x[i]} -> ${y[i]} (step ${step})`);
        }
      }
    }
  });
}

// ---------------------------------------------------------------------------------------------
// Q6_K: 16 sub-blocks of 16, x = d * sc * (q - 32), int8 sc (make_qx_quants)

/** Q6_K hand block: every sub-block holds 4 * i - 32 for i = 0..15 (-32, -28, ..., 28). */
function q6KHandBlock(): Float32Array {
  return Float32Array.from({ length: 256 }, (_, n) => 4 * (n % 16) - 32);
}

Deno.test("quantizeRows() Q6_K: d = -1/128, int8 scales -128, ql low nibbles, qh top 2 bits", () => {
  // make_qx_quants(16, 32, x, L, 1, NULL): max = -32 (first of largest magnitude), iscale =
  // -32 / -32 = 1, l = x, L = x + 32. With w = x^2, sumlx = suml2 = sum x^4 = 3442688 (< 2^24:
  // exact), scale = 1. The 18 other iscales give levels either equal to x (same sums: not
  // better) or not proportional to x (Cauchy-Schwarz: strictly worse): scale stays 1.
  // max_scale = 1: iscale = -128, d = f16(1 / -128) = -2^-7 = 0xa000 (00 a0), each scale =
  // min(127, nearest(-128 * 1)) = -128 (80). Requantized with d*sc = 1: L = x + 32 = 4 * (n % 16).
  // ql (128 bytes): per 128 values, ql[l] = (L_l & 15) | (L_{l+64} & 15) << 4 and ql[l+32] the
  // same for l+32 and l+96; all four have n % 16 = l % 16, and 4t & 15 = 4 * (t % 4): 00 44 88 cc.
  // qh (64 bytes): L >> 4 = t >> 2 for all four values, at bits 0, 2, 4, 6: (t >> 2) * 0x55,
  // 4 times each of 00 55 aa ff per 16 values.
  const ql = times("00 44 88 cc", 32);
  const qh = times("00 00 00 00 55 55 55 55 aa aa aa aa ff ff ff ff", 4);
  const expected = `${ql} ${qh} ${times("80", 16)} 00 a0`;
  assert.equal(hex(quantizeRows("Q6_K", q6KHandBlock(), 1, 256)), expected);
});

Deno.test("dequantizeRows() Q6_K of a hand-built block: ql/qh bit layout, signed scales", () => {
  // d = 0.5 (00 38); scales sc_k = k - 8 for k = 0..15 except sc_0 = 1, sc_2 = 2, sc_4 = 127,
  // sc_6 = 0. ql[0] = 0x21, ql[32] = 0x00, qh[0] = 0xe4 (bits 7-0: 11 10 01 00); all else 0.
  // value 0:  ql[0] & 15 = 1 | qh bits 0-1 (0) << 4 = 1  -> q - 32 = -31, sc_0 = 1:   -15.5
  // value 32: ql[32] & 15 = 0 | bits 2-3 (1) << 4 = 16  -> -16,           sc_2 = 2:   -16
  // value 64: ql[0] >> 4 = 2 | bits 4-5 (2) << 4 = 34   -> 2,             sc_4 = 127: 127
  // value 96: ql[32] >> 4 = 0 | bits 6-7 (3) << 4 = 48  -> 16,            sc_6 = 0:   0
  // Every other value: q = 0 -> -32, times 0.5 * its scale (scale index = value / 16).
  const sc = Array.from({ length: 16 }, (_, k) => k - 8);
  sc[0] = 1, sc[2] = 2, sc[4] = 127, sc[6] = 0;
  const bytes = new Uint8Array(210);
  bytes[0] = 0x21;
  bytes[128] = 0xe4;
  for (let k = 0; k < 16; k++) bytes[192 + k] = sc[k] & 0xff;
  bytes[208] = 0x00, bytes[209] = 0x38;
  const expected = Array.from({ length: 256 }, (_, n) => 0.5 * sc[n >> 4] * -32);
  expected[0] = -15.5, expected[32] = -16, expected[64] = 127, expected[96] = 0;
  assert.deepEqual(Array.from(dequantizeRows("Q6_K", bytes, 1, 256)), expected);
});

// ---------------------------------------------------------------------------------------------
// Across types

Deno.test("quantizeRows(dequantizeRows(q)) == q for Q8_0, Q4_0 and Q5_0", () => {
  // Dequantized values are (q - offset) * f16(d), and the level of largest magnitude (127, -8,
  // -16) is always used, so amax (or max) of the dequantized block is that level times f16(d):
  // the new d is f16(d) exactly (a product of an 11-bit and a 7-bit number divided back), and
  // x/d lands within 2^-20 of the old level: the same bytes. (Q4_K and Q6_K refit their scales
  // and do not have this property; see the next test.)
  for (const type of ["Q8_0", "Q4_0", "Q5_0"] as const) {
    const q = quantizeRows(type, randomRows(64 * 256, 6, 1, true), 64, 256);
    const again = quantizeRows(type, dequantizeRows(type, q, 64, 256), 64, 256);
    assert.equal(hex(again), hex(q), type);
  }
});

Deno.test("quantizeRows(dequantizeRows(q)) is not always q for Q4_K and Q6_K, but stays close", () => {
  // make_qkx2_quants / make_qx_quants refit scale and min on the dequantized values, and the
  // 6-bit / 8-bit scales are rounded again, so a second pass may pick other bytes (about half of
  // the blocks with outliers). The hand-worked blocks above are fixed points; on random rows the
  // twice-quantized values stay within the first pass's bound (its largest step) of the first.
  assert.equal(
    hex(
      quantizeRows(
        "Q4_K",
        dequantizeRows("Q4_K", quantizeRows("Q4_K", q4KHandBlock(), 1, 256), 1, 256),
        1,
        256,
      ),
    ),
    hex(quantizeRows("Q4_K", q4KHandBlock(), 1, 256)),
  );
  assert.equal(
    hex(
      quantizeRows(
        "Q6_K",
        dequantizeRows("Q6_K", quantizeRows("Q6_K", q6KHandBlock(), 1, 256), 1, 256),
        1,
        256,
      ),
    ),
    hex(quantizeRows("Q6_K", q6KHandBlock(), 1, 256)),
  );
  for (const type of ["Q4_K", "Q6_K"] as const) {
    const rows = 32, cols = 1024, bytesPer = QUANT_FORMATS[type].bytes;
    const q = quantizeRows(type, randomRows(rows * cols, 7, 0.05, true), rows, cols);
    const y = dequantizeRows(type, q, rows, cols);
    const q2 = quantizeRows(type, y, rows, cols);
    const y2 = dequantizeRows(type, q2, rows, cols);
    let changed = 0;
    for (let b = 0; b < rows * cols / K_BLOCK; b++) {
      if (
        hex(q.subarray(b * bytesPer, (b + 1) * bytesPer)) !==
          hex(q2.subarray(b * bytesPer, (b + 1) * bytesPer))
      ) changed++;
      const step = kMaxStep(type, q2, b * bytesPer);
      for (let i = b * K_BLOCK; i < (b + 1) * K_BLOCK; i++) {
        assert.ok(Math.abs(y[i] - y2[i]) <= step, `${type} value ${i}`);
      }
    }
    assert.ok(changed > 0, `${type}: expected some blocks to change on requantization`);
  }
});

Deno.test("quantizeRows() of an all-zero block: GGML's bytes (Q4_0/Q5_0 store d = -0)", () => {
  // Q8_0: amax 0 -> d 0, id 0, q 0: all zero. Q4_0: max = 0, d = 0 / -8 = -0 -> f16 0x8000
  // (00 80), id = 0 (d is false), q = trunc(0 + 8.5) = 8: bytes 0x88. Q5_0: d = -0 (00 80),
  // q = 16: low nibbles 0, every 5th bit set (qh ff ff ff ff). Q4_K: make_qkx2_quants sees max ==
  // min == 0: scale 0, the_min 0, L 0: all zero. Q6_K: every sub-block below GROUP_MAX_EPS:
  // the block is memset to 0.
  const expected: Record<QuantType, string> = {
    Q8_0: times("00", 34),
    Q4_0: `00 80 ${times("88", 16)}`,
    Q5_0: `00 80 ff ff ff ff ${times("00", 16)}`,
    Q4_K: times("00", 144),
    Q6_K: times("00", 210),
  };
  for (const type of QUANT_TYPES) {
    const n = QUANT_FORMATS[type].elems;
    const q = quantizeRows(type, new Float32Array(n), 1, n);
    assert.equal(hex(q), expected[type], type);
    assert.ok(dequantizeRows(type, q, 1, n).every((v) => v === 0), type); // -0 for Q4_0, Q5_0
  }
});

Deno.test("quantizeRows() Q8_0 with one huge value: f16(d) as GGML rounds it, infinite past f16", () => {
  // x_0 = 1e6, the rest +-2e-3 or less. d = f32(1e6 / 127) = 7874.015625; f16 spacing at 2^12 is
  // 4: 7874.015625 / 4 = 1968.504 -> 1969 * 4 = 7876 = 0x6fb1 (b1 6f). q_0 = roundf(1e6 / d) = 127,
  // the small values round to 0. Dequantized: 127 * 7876 = 1000252 (within d/2 + 127 * 2).
  const x = Float32Array.from({ length: 32 }, (_, j) => (j === 0 ? 1e6 : ((j % 5) - 2) * 1e-3));
  const q = quantizeRows("Q8_0", x, 1, 32);
  assert.equal(hex(q), `b1 6f 7f ${times("00", 31)}`);
  assert.equal(dequantizeRows("Q8_0", q, 1, 32)[0], 1000252);
  // amax = 1e9: d = 7.87e6 overflows f16 to +inf (00 7c), as GGML_FP32_TO_FP16 does; q = -127
  // for -1e9 and 0 for the ones. Dequantizing gives -inf and 0 * inf = NaN, as in C.
  const big = Float32Array.from({ length: 32 }, (_, j) => (j === 3 ? -1e9 : 1));
  const qBig = quantizeRows("Q8_0", big, 1, 32);
  assert.equal(hex(qBig), `00 7c 00 00 00 81 ${times("00", 28)}`);
  const yBig = dequantizeRows("Q8_0", qBig, 1, 32);
  assert.equal(yBig[3], -Infinity);
  assert.ok(Number.isNaN(yBig[0]));
});

Deno.test("quantizeRows() Q4_K and Q6_K with one huge value keep it within its sub-block's step", () => {
  // One value 1000 among values ~0.01: its sub-block gets the largest scale (sc 63 / -128), the
  // other sub-blocks' scales round to 0 or 1 against it, so their values collapse to about
  // -dmin * m (Q4_K) or 0 (Q6_K): the whole super-block shares one scale, as in GGML.
  for (const type of ["Q4_K", "Q6_K"] as const) {
    const x = randomRows(256, 8, 0.01);
    x[100] = 1000;
    const q = quantizeRows(type, x, 1, 256);
    const y = dequantizeRows(type, q, 1, 256);
    const step = kMaxStep(type, q, 0);
    assert.ok(Math.abs(y[100] - 1000) <= step / 2, `${type}: ${y[100]}`);
    for (let i = 0; i < 256; i++) assert.ok(Math.abs(x[i] - y[i]) <= step, `${type} value ${i}`);
  }
});

Deno.test("quantizeRows() of a negated block flips only d's sign (Q4_0, Q5_0, Q6_K), or q (Q8_0)", () => {
  // Q4_0/Q5_0: max -> -max, d -> -d, x/d unchanged. Q6_K: make_qx_quants' iscale = -nmax / max
  // flips with max, so iscale * x and the levels are unchanged, the scales flip, and the int8
  // scales (iscale * scale) do not: only the sign bit of d (byte 209) changes. Q8_0: d = amax / 127
  // is unchanged and roundf is odd: q -> -q.
  const x = randomRows(4 * 256, 9, 1, true);
  const neg = x.map((v) => -v);
  for (const type of ["Q4_0", "Q5_0", "Q6_K"] as const) {
    const q = quantizeRows(type, x, 4, 256), qn = quantizeRows(type, neg, 4, 256);
    const { bytes } = QUANT_FORMATS[type];
    const signByte = type === "Q6_K" ? 209 : 1;
    for (let b = 0; b < q.length; b += bytes) q[b + signByte] ^= 0x80;
    assert.equal(hex(qn), hex(q), type);
  }
  const q8 = quantizeRows("Q8_0", x, 4, 256), q8n = quantizeRows("Q8_0", neg, 4, 256);
  for (let b = 0; b < q8.length; b += 34) {
    for (let i = b + 2; i < b + 34; i++) q8[i] = -q8[i] & 0xff;
  }
  assert.equal(hex(q8n), hex(q8));
});

Deno.test("quantizeRows() and dequantizeRows() throw RangeError for partial blocks or wrong sizes", () => {
  for (const type of QUANT_TYPES) {
    const n = QUANT_FORMATS[type].elems;
    assert.throws(() => quantizeRows(type, new Float32Array(n + 16), 1, n + 16), RangeError);
    assert.throws(() => quantizeRows(type, new Float32Array(n), 2, n), RangeError);
    assert.throws(() => dequantizeRows(type, new Uint8Array(10), 1, n + 16), RangeError);
    assert.throws(
      () => dequantizeRows(type, new Uint8Array(QUANT_FORMATS[type].bytes - 1), 1, n),
      RangeError,
    );
  }
  assert.throws(() => quantizeRows("Q4_K", new Float32Array(768), 3, 256.5), RangeError);
});

Deno.test("quantizeRows() treats rows as consecutive blocks: two rows equal the rows apart", () => {
  for (const type of QUANT_TYPES) {
    const x = randomRows(2 * 512, 10, 0.1, true);
    const both = quantizeRows(type, x, 2, 512);
    const apart = [
      quantizeRows(type, x.subarray(0, 512), 1, 512),
      quantizeRows(type, x.subarray(512), 1, 512),
    ];
    assert.equal(both.length, 2 * (512 / QUANT_FORMATS[type].elems) * QUANT_FORMATS[type].bytes);
    assert.equal(hex(both), hex(Uint8Array.from([...apart[0], ...apart[1]])), type);
    assert.equal(quantizeRows(type, new Float32Array(0), 0, 512).length, 0);
  }
});

// ---------------------------------------------------------------------------------------------
// Against the C reference

const GOLDEN_ROWS = 16, GOLDEN_COLS = 512;

/** 16 rows of 512, each row one kind of data (weights-like, outliers, ties on a 0.25 grid, half
 * zeros, all positive, all negative, magnitudes 2^-15..2^15, integers). Arithmetic only: the same
 * values everywhere. */
function goldenInput(): Float32Array {
  const u = mulberry32(20240601);
  const g = () => u() + u() + u() + u() - 2;
  const x = new Float32Array(GOLDEN_ROWS * GOLDEN_COLS);
  for (let r = 0; r < GOLDEN_ROWS; r++) {
    for (let c = 0; c < GOLDEN_COLS; c++) {
      const v = g();
      const kinds = [
        v * 0.02,
        v * (u() < 0.02 ? 30 : 1),
        Math.round(v * 16) / 4,
        u() < 0.5 ? 0 : v * 1e-3,
        Math.abs(v) + 0.1,
        -Math.abs(v) - 0.1,
        v * 2 ** (Math.floor(u() * 30) - 15),
        Math.round(v * 40),
      ];
      x[r * GOLDEN_COLS + c] = kinds[r % kinds.length];
    }
  }
  return x;
}

/** SHA-256 of goldenInput() quantized by ggml-quants.c's quantize_row_*_ref, and of those bytes
 * dequantized by its dequantize_row_* (f32 little-endian), from the C code built with gcc -O2 on
 * x86-64. (A build that contracts a*b+c into FMA, e.g. with -march=haswell, gives other Q4_K and
 * Q6_K bytes: Q4_K 7e1c1639..., Q6_K a372f226...) */
const GOLDEN: Record<QuantType, { quantized: string; dequantized: string }> = {
  Q8_0: {
    quantized: "c7cdaf7402c7685f2077173d03589f8c204c53c35ac0a989d98a13e299d886f0",
    dequantized: "8fbeaa29f2cd044e403da1958a3ccddde4e988f74d4163ec8fa0c3dc5629aef9",
  },
  Q4_0: {
    quantized: "fb2bf09a03e30ff13b289fe47cca13b0a34b12f34b3eaa41633e4e8a43e5012c",
    dequantized: "59529a34fefcb13bae32dfa1d3902b0b2db50801631b1716a811c31233905af2",
  },
  Q5_0: {
    quantized: "9022fb1f7ba5876844e8d428cf8328b170090f1b7854f78c581002dcb40a3594",
    dequantized: "0d450fe761673a2f39617be858c2b07e911716211f0eb5fd425333822e9827c5",
  },
  Q4_K: {
    quantized: "6012a0eae6822963e3dbac17264aec591e06f6593fddef1cc60fc0145570c15a",
    dequantized: "cd870a6654fce54fa41a52b9927e3d3f90b6d8e710d9c228bf4d775af915df3e",
  },
  Q6_K: {
    quantized: "f5aee195ea12a69ab52b5a653383da12d5f770d088ba43d9ba703059b955e9d6",
    dequantized: "1d7e8f76eeebee84d833d730c9367315f23217e0427dcb44463fd906070381c6",
  },
};

async function sha256(bytes: Uint8Array<ArrayBuffer>): Promise<string> {
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
  return Array.from(digest, (b) => b.toString(16).padStart(2, "0")).join("");
}

for (const type of QUANT_TYPES) {
  Deno.test(`quantizeRows() and dequantizeRows() ${type} match ggml-quants.c byte for byte`, async () => {
    const q = quantizeRows(type, goldenInput(), GOLDEN_ROWS, GOLDEN_COLS);
    assert.equal(await sha256(q), GOLDEN[type].quantized);
    const y = dequantizeRows(type, q, GOLDEN_ROWS, GOLDEN_COLS);
    assert.equal(await sha256(new Uint8Array(y.buffer)), GOLDEN[type].dequantized);
  });
}
