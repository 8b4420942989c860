// Weight loaders for GGML Q4_K weights (src/quant/formats.ts): `weights` (declared by the kernel
// as array<WeightWord>) is a flat sequence of 144-byte (36-word) blocks from byte 0, block
// b = e / 256 at word 36 * b: word 0 f16 d (low half) and dmin (high half), words 1..3 u8
// scales[12], words 4..35 u8 qs[128]. Element m of a block lies in 64-value chunk c = m / 64 and
// sub-block s = m / 32, its 4 bits in qs[32c + m % 32] (low nibble for even s, high for odd),
// and x = d1 * q - m1 with d1 = d * sc, m1 = dmin * mn (f32 products) and sc, mn the 6-bit scale
// and min of sub-block s (get_scale_min_k4), as GGML's dequantize_row_q4_K computes it. Every
// product is exact in f32, so only the subtraction rounds (a fused multiply-add gives the same).
// load_w8 reads 2 words of qs, the d/dmin word and scales words 1, 2 (and 3 for s >= 4): 5 or 6
// words. load_w4(e) returns elements e..e+3 (e a multiple of 4), load_w8(e) e..e+7 (e a multiple
// of 8).

alias WeightWord = u32;

struct W8 {
  lo: vec4<f32>,
  hi: vec4<f32>,
}

// (d * sc, dmin * mn) of sub-block s of the block at word wb.
fn q4_k_scale_min(wb: u32, s: u32) -> vec2<f32> {
  let dm = unpack2x16float(weights[wb]);
  let s0 = weights[wb + 1u]; // scales[0..4)
  let s1 = weights[wb + 2u]; // scales[4..8)
  var sc: u32;
  var mn: u32;
  if (s < 4u) {
    let k = s * 8u;
    sc = (s0 >> k) & 63u; // scales[s] & 63
    mn = (s1 >> k) & 63u; // scales[s + 4] & 63
  } else {
    let k = (s - 4u) * 8u;
    let s2 = weights[wb + 3u] >> k; // scales[s + 4]
    sc = (s2 & 15u) | (((s0 >> k) >> 2u) & 0x30u); // | (scales[s - 4] >> 6) << 4
    mn = ((s2 >> 4u) & 15u) | (((s1 >> k) >> 2u) & 0x30u); // | (scales[s] >> 6) << 4
  }
  return vec2<f32>(dm.x * f32(sc), dm.y * f32(mn));
}

// d1 * q - m1 for the nibbles (low four bits) of the four bytes of w.
fn q4_k_x4(w: u32, dm: vec2<f32>) -> vec4<f32> {
  let n = (vec4<u32>(w) >> vec4<u32>(0u, 8u, 16u, 24u)) & vec4<u32>(15u);
  return dm.x * vec4<f32>(n) - dm.y;
}

fn load_w4(e: u32) -> vec4<f32> {
  let wb = (e >> 8u) * 36u;
  let m = e & 255u;
  let dm = q4_k_scale_min(wb, m >> 5u);
  let q = weights[wb + 4u + (m >> 6u) * 8u + ((m & 31u) >> 2u)]; // qs[32c + m % 32]
  return q4_k_x4(q >> ((m & 32u) >> 3u), dm);
}

fn load_w8(e: u32) -> W8 {
  let wb = (e >> 8u) * 36u;
  let m = e & 255u;
  let dm = q4_k_scale_min(wb, m >> 5u);
  let i = wb + 4u + (m >> 6u) * 8u + ((m & 31u) >> 2u); // qs[32c + m % 32]
  let s = (m & 32u) >> 3u; // 0: low nibbles, 4: high
  return W8(q4_k_x4(weights[i] >> s, dm), q4_k_x4(weights[i + 1u] >> s, dm));
}
