// Weight loaders for GGML Q6_K weights (src/quant/formats.ts): `weights` (declared by the kernel
// as array<WeightWord>) is a flat sequence of 210-byte blocks from byte 0, block b = e / 256 at
// byte 210 * b holding u8 ql[128], u8 qh[64], int8 scales[16], f16 d. Element m of a block, with
// n = m / 128, g = (m / 32) % 4, l = m % 32, has its low 4 bits in ql[64n + 32(g % 2) + l] (low
// nibble for g < 2, high for g >= 2), its high 2 bits at bit 2g of qh[32n + l], its scale in
// scales[8n + 2g + l / 16], and x = d * sc * (q - 32) as GGML's dequantize_row_q6_K computes it
// (d * sc is exact in f32, so the value is rounded once). Blocks are only 2-byte aligned: the 8
// bytes of ql and of qh that load_w8 needs take 2 words each when they start on a word, 3 when
// they straddle; with the scale's word and d's word, 6 or 8 words. load_w4(e) returns elements
// e..e+3 (e a multiple of 4), load_w8(e) e..e+7 (e a multiple of 8).

alias WeightWord = u32;

struct W8 {
  lo: vec4<f32>,
  hi: vec4<f32>,
}

// The 4 bytes at even byte address a, little-endian.
fn q6_k_bytes4(a: u32) -> u32 {
  let i = a >> 2u;
  var w = weights[i];
  if ((a & 2u) != 0u) {
    w = (w >> 16u) | (weights[i + 1u] << 16u);
  }
  return w;
}

// The 8 bytes at even byte address a, little-endian.
fn q6_k_bytes8(a: u32) -> vec2<u32> {
  let i = a >> 2u;
  var w = vec2<u32>(weights[i], weights[i + 1u]);
  if ((a & 2u) != 0u) {
    let w2 = weights[i + 2u];
    w = vec2<u32>((w.x >> 16u) | (w.y << 16u), (w.y >> 16u) | (w2 << 16u));
  }
  return w;
}

// d * sc for element m of the block at byte base.
fn q6_k_scale(base: u32, m: u32) -> f32 {
  let dh = unpack2x16float(weights[(base + 208u) >> 2u]);
  let d = select(dh.x, dh.y, (base & 2u) != 0u);
  let a = base + 192u + (m >> 4u); // scales[8n + 2g + l / 16]
  let sc = extractBits(bitcast<i32>(weights[a >> 2u]), (a & 3u) * 8u, 8u);
  return d * f32(sc);
}

// (d * sc) * (q - 32) for q = the nibbles of ql (low four bits of each byte) | the 2-bit fields of
// qh (bits 0..1 of each byte) << 4.
fn q6_k_x4(ql: u32, qh: u32, ds: f32) -> vec4<f32> {
  let lo = (vec4<u32>(ql) >> vec4<u32>(0u, 8u, 16u, 24u)) & vec4<u32>(15u);
  let hi = ((vec4<u32>(qh) >> vec4<u32>(0u, 8u, 16u, 24u)) & vec4<u32>(3u)) << vec4<u32>(4u);
  return ds * vec4<f32>(vec4<i32>(lo | hi) - vec4<i32>(32));
}

fn load_w4(e: u32) -> vec4<f32> {
  let base = (e >> 8u) * 210u;
  let m = e & 255u;
  let n = m >> 7u;
  let g = (m >> 5u) & 3u;
  let l = m & 31u;
  let ql = q6_k_bytes4(base + n * 64u + (g & 1u) * 32u + l) >> ((g & 2u) * 2u);
  let qh = q6_k_bytes4(base + 128u + n * 32u + l) >> (g * 2u);
  return q6_k_x4(ql, qh, q6_k_scale(base, m));
}

fn load_w8(e: u32) -> W8 {
  let base = (e >> 8u) * 210u;
  let m = e & 255u;
  let n = m >> 7u;
  let g = (m >> 5u) & 3u;
  let l = m & 31u;
  let ds = q6_k_scale(base, m);
  let ql = q6_k_bytes8(base + n * 64u + (g & 1u) * 32u + l) >> vec2<u32>((g & 2u) * 2u);
  let qh = q6_k_bytes8(base + 128u + n * 32u + l) >> vec2<u32>(g * 2u);
  return W8(q6_k_x4(ql.x, qh.x, ds), q6_k_x4(ql.y, qh.y, ds));
}
