// Weight loaders for GGML Q4_0 weights (src/quant/formats.ts): `weights` (declared by the kernel as
// array<WeightWord>) is a flat sequence of 18-byte blocks from byte 0, block b = e / 32 at byte
// 18 * b holding f16 d then u8 qs[16]; element j < 16 of a block is the low nibble of qs[j],
// element j + 16 the high nibble, and x = (q - 8) * d as GGML's dequantize_row_q4_0 computes it
// (exact in f32). load_w8(e) with e % 32 in {0, 8} reads the low nibbles of qs[0..8) or
// qs[8..16), with e % 32 in {16, 24} the high nibbles of the same bytes: 2 words when the 8 bytes
// start on a word, 3 when they straddle, plus the word holding d (3 or 4 words). load_w4(e)
// returns elements e..e+3 (e a multiple of 4), load_w8(e) e..e+7 (e a multiple of 8).

alias WeightWord = u32;

struct W8 {
  lo: vec4<f32>,
  hi: vec4<f32>,
}

// The f16 at even byte address a, widened to f32 (exact, subnormals included).
fn q4_0_f16(a: u32) -> f32 {
  let h = unpack2x16float(weights[a >> 2u]);
  return select(h.x, h.y, (a & 2u) != 0u);
}

// The low nibbles of the four bytes of w, minus 8, as f32.
fn q4_0_x4(w: u32) -> vec4<f32> {
  let n = (vec4<u32>(w) >> vec4<u32>(0u, 8u, 16u, 24u)) & vec4<u32>(15u);
  return vec4<f32>(vec4<i32>(n) - vec4<i32>(8));
}

fn load_w4(e: u32) -> vec4<f32> {
  let base = (e >> 5u) * 18u;
  let j = e & 31u;
  let a = base + 2u + (j & 15u); // byte of qs[j % 16]
  let i = a >> 2u;
  var q = weights[i];
  if ((a & 2u) != 0u) {
    q = (q >> 16u) | (weights[i + 1u] << 16u);
  }
  return q4_0_x4(q >> ((j & 16u) >> 2u)) * q4_0_f16(base);
}

fn load_w8(e: u32) -> W8 {
  let base = (e >> 5u) * 18u;
  let d = q4_0_f16(base);
  let j = e & 31u;
  let a = base + 2u + (j & 8u); // byte of qs[j % 16]
  let i = a >> 2u;
  var q0 = weights[i];
  var q1 = weights[i + 1u];
  if ((a & 2u) != 0u) {
    let q2 = weights[i + 2u];
    q0 = (q0 >> 16u) | (q1 << 16u);
    q1 = (q1 >> 16u) | (q2 << 16u);
  }
  let s = (j & 16u) >> 2u; // 0: low nibbles, 4: high
  return W8(q4_0_x4(q0 >> s) * d, q4_0_x4(q1 >> s) * d);
}
