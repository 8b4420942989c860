// Weight loaders for GGML Q5_0 weights (src/quant/formats.ts): `weights` (declared by the kernel
// as array<WeightWord>) is a flat sequence of 22-byte blocks from byte 0, block b = e / 32 at byte
// 22 * b holding f16 d, u32 qh (little-endian), u8 qs[16]. Element j of a block has its low four
// bits in qs[j % 16] (low nibble for j < 16, high for j >= 16) and its fifth bit in bit j of qh;
// x = (q - 16) * d as GGML's dequantize_row_q5_0 computes it (exact in f32). load_w8(e) reads the
// 8 bytes of qs as Q4_0 does (2 words when they start on a word, 3 when they straddle), the word
// holding byte (e % 32) / 8 of qh (its 8 fifth bits) and the word holding d: 4 or 5 words.
// load_w4(e) returns elements e..e+3 (e a multiple of 4), load_w8(e) e..e+7 (e a multiple of 8).

alias WeightWord = u32;

struct W8 {
  lo: vec4<f32>,
  hi: vec4<f32>,
}

// The f16 at even byte address a, widened to f32 (exact, subnormals included).
fn q5_0_f16(a: u32) -> f32 {
  let h = unpack2x16float(weights[a >> 2u]);
  return select(h.x, h.y, (a & 2u) != 0u);
}

// The byte at address a (in the low 8 bits; higher bits are the following bytes).
fn q5_0_byte(a: u32) -> u32 {
  return weights[a >> 2u] >> ((a & 3u) * 8u);
}

// Low nibbles of the four bytes of w with fifth bits h (bits 0..3), minus 16, as f32.
fn q5_0_x4(w: u32, h: u32) -> vec4<f32> {
  let n = (vec4<u32>(w) >> vec4<u32>(0u, 8u, 16u, 24u)) & vec4<u32>(15u);
  let b = ((vec4<u32>(h) >> vec4<u32>(0u, 1u, 2u, 3u)) & vec4<u32>(1u)) << vec4<u32>(4u);
  return vec4<f32>(vec4<i32>(n | b) - vec4<i32>(16));
}

fn load_w4(e: u32) -> vec4<f32> {
  let base = (e >> 5u) * 22u;
  let j = e & 31u;
  let h = q5_0_byte(base + 2u + (j >> 3u)) >> (j & 4u); // qh bits j..j+3
  let a = base + 6u + (j & 15u); // byte of qs[j % 16]
  let i = a >> 2u;
  var q = weights[i];
  if ((a & 2u) != 0u) {
    q = (q >> 16u) | (weights[i + 1u] << 16u);
  }
  return q5_0_x4(q >> ((j & 16u) >> 2u), h) * q5_0_f16(base);
}

fn load_w8(e: u32) -> W8 {
  let base = (e >> 5u) * 22u;
  let d = q5_0_f16(base);
  let j = e & 31u;
  let h = q5_0_byte(base + 2u + (j >> 3u)); // qh bits j..j+7
  let a = base + 6u + (j & 8u); // byte of qs[j % 16]
  let i = a >> 2u;
  var q0 = weights[i];
  var q1 = weights[i + 1u];
  if ((a & 2u) != 0u) {
    let q2 = weights[i + 2u];
    q0 = (q0 >> 16u) | (q1 << 16u);
    q1 = (q1 >> 16u) | (q2 << 16u);
  }
  let s = (j & 16u) >> 2u; // 0: low nibbles, 4: high
  return W8(q5_0_x4(q0 >> s, h) * d, q5_0_x4(q1 >> s, h >> 4u) * d);
}
