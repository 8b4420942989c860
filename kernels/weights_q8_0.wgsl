// Weight loaders for GGML Q8_0 weights (src/quant/formats.ts): `weights` (declared by the kernel as
// array<WeightWord>) is a flat sequence of 34-byte blocks from byte 0, block b = e / 32 at byte
// 34 * b holding f16 d then int8 qs[32]; element e is x = d * qs[e % 32], as GGML's
// dequantize_row_q8_0 computes it (d * q is exact in f32: 11 by 8 significant bits). Blocks are
// only 2-byte aligned, so 8 int8 values take 2 words when they start on a word, 3 when they
// straddle; load_w8 reads those and the word holding d (3 or 4 words). load_w4(e) returns
// elements e..e+3 (e a multiple of 4), load_w8(e) e..e+7 (e a multiple of 8).

alias WeightWord = u32;

struct W8 {
  lo: vec4<f32>,
  hi: vec4<f32>,
}

// The f16 at even byte address a, widened to f32 (exact, subnormals included).
fn q8_0_f16(a: u32) -> f32 {
  let h = unpack2x16float(weights[a >> 2u]);
  return select(h.x, h.y, (a & 2u) != 0u);
}

// The four int8 of a little-endian word, as f32.
fn q8_0_i8x4(w: u32) -> vec4<f32> {
  let v = bitcast<vec4<i32>>(vec4<u32>(w << 24u, w << 16u, w << 8u, w));
  return vec4<f32>(v >> vec4<u32>(24u));
}

fn load_w4(e: u32) -> vec4<f32> {
  let base = (e >> 5u) * 34u;
  let a = base + 2u + (e & 31u); // byte of qs[e % 32]
  let i = a >> 2u;
  var q = weights[i];
  if ((a & 2u) != 0u) {
    q = (q >> 16u) | (weights[i + 1u] << 16u);
  }
  return q8_0_i8x4(q) * q8_0_f16(base);
}

fn load_w8(e: u32) -> W8 {
  let base = (e >> 5u) * 34u;
  let d = q8_0_f16(base);
  let a = base + 2u + (e & 31u); // byte of qs[e % 32]
  let i = a >> 2u;
  var q0 = weights[i];
  var q1 = weights[i + 1u];
  if ((a & 2u) != 0u) {
    let q2 = weights[i + 2u];
    q0 = (q0 >> 16u) | (q1 << 16u);
    q1 = (q1 >> 16u) | (q2 << 16u);
  }
  return W8(q8_0_i8x4(q0) * d, q8_0_i8x4(q1) * d);
}
