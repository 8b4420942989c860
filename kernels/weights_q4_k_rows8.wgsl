// Weight loaders for GGML Q4_K weights repacked in 8-row blocks (src/gpu/resident.ts
// repackQ4KRows8; only matmul reads them, with BLOCKED = 1): elements are addressed in the rows8
// order of bf16 rows8 weights (matmul.wgsl), and each block of 8 rows keeps, per super-block of 256
// columns, the same 1152 bytes as its 8 GGML blocks, as 72 vec4<u32>:
//   0, 1: the rows' (d, dmin) words, rows 0..3 then 4..7;
//   2..7: their 12 scale bytes transposed: for byte k of scales words 0 and 1 (k = 0..3), the vec4
//     2 + 3 (k / 2) + k % 2 holds scales[k] of rows 0..3 (.x, row r in byte r), of rows 4..7 (.y),
//     scales[4 + k] likewise (.z, .w); the vec4 2 + 3 (k / 2) + 2 holds scales[8 + k] of rows
//     0..7 for even k (.x, .y) and odd k (.z, .w);
//   8..71: per chunk j of 8 columns, the rows' 8 nibbles (one word a row, column i in bits
//     4i..4i+3), rows 0..3 then 4..7.
// Element (row r, column k) is (d * sc) * q - dmin * mn with sc, mn the 6-bit scale and min of its
// sub-block of 32 (get_scale_min_k4), as GGML's Q4_K (and weights_q4_k.wgsl) computes it, so both
// layouts give the same values. load_block8(e), at the first element of a chunk's row 0, reads the
// chunk's 8 rows with 6 vector loads (8 of bf16 rows8; Block8 is matmul.wgsl's); load_w8 / load_w4
// read one row's elements.

alias WeightWord = vec4<u32>;

struct W8 {
  lo: vec4<f32>,
  hi: vec4<f32>,
}

// The vec4 index of element e's super-block of 8 rows x 256 columns (2048 elements, 72 vec4).
fn q4kr_base(e: u32) -> u32 {
  return (e >> 11u) * 72u;
}

// Byte r (rows 0..7) of the 8 bytes in words lo (rows 0..3) and hi (rows 4..7).
fn q4kr_byte(lo: u32, hi: u32, r: u32) -> u32 {
  return (select(lo, hi, r >= 4u) >> ((r & 3u) * 8u)) & 255u;
}

// (d * sc, dmin * mn) of row r for sub-block s, from the rows' (d, dmin) word and the scale
// vec4s a (scales[k], scales[4 + k]) and b (scales[8 + k]) of k = s % 4.
fn q4kr_scale_min(dword: u32, a: vec4<u32>, b: vec4<u32>, s: u32, r: u32) -> vec2<f32> {
  let dm = unpack2x16float(dword);
  let s0 = q4kr_byte(a.x, a.y, r); // scales[k]
  let s1 = q4kr_byte(a.z, a.w, r); // scales[4 + k]
  var sc: u32;
  var mn: u32;
  if (s < 4u) {
    sc = s0 & 63u;
    mn = s1 & 63u;
  } else {
    let odd = (s & 1u) != 0u;
    let s2 = q4kr_byte(select(b.x, b.z, odd), select(b.y, b.w, odd), r); // scales[8 + k]
    sc = (s2 & 15u) | ((s0 >> 6u) << 4u);
    mn = (s2 >> 4u) | ((s1 >> 6u) << 4u);
  }
  return vec2<f32>(dm.x * f32(sc), dm.y * f32(mn));
}

// Row r's 8 values of a chunk from its nibbles' word and its (d * sc, dmin * mn).
fn q4kr_row(q: u32, dm: vec2<f32>) -> W8 {
  let lo = (vec4<u32>(q) >> vec4<u32>(0u, 4u, 8u, 12u)) & vec4<u32>(15u);
  let hi = (vec4<u32>(q) >> vec4<u32>(16u, 20u, 24u, 28u)) & vec4<u32>(15u);
  return W8(dm.x * vec4<f32>(lo) - dm.y, dm.x * vec4<f32>(hi) - dm.y);
}

fn load_block8(e: u32) -> Block8 {
  let base = q4kr_base(e);
  let j = (e & 2047u) >> 6u; // chunk of 8 columns in the super-block
  let s = j >> 2u; // sub-block of 32
  let k = s & 3u;
  let d0 = weights[base];
  let d1 = weights[base + 1u];
  let a = weights[base + 2u + 3u * (k >> 1u) + (k & 1u)];
  let b = weights[base + 4u + 3u * (k >> 1u)];
  let q0 = weights[base + 8u + 2u * j];
  let q1 = weights[base + 9u + 2u * j];
  return Block8(
    q4kr_row(q0.x, q4kr_scale_min(d0.x, a, b, s, 0u)),
    q4kr_row(q0.y, q4kr_scale_min(d0.y, a, b, s, 1u)),
    q4kr_row(q0.z, q4kr_scale_min(d0.z, a, b, s, 2u)),
    q4kr_row(q0.w, q4kr_scale_min(d0.w, a, b, s, 3u)),
    q4kr_row(q1.x, q4kr_scale_min(d1.x, a, b, s, 4u)),
    q4kr_row(q1.y, q4kr_scale_min(d1.y, a, b, s, 5u)),
    q4kr_row(q1.z, q4kr_scale_min(d1.z, a, b, s, 6u)),
    q4kr_row(q1.w, q4kr_scale_min(d1.w, a, b, s, 7u)),
  );
}

fn load_w8(e: u32) -> W8 {
  let base = q4kr_base(e);
  let j = (e & 2047u) >> 6u;
  let s = j >> 2u;
  let k = s & 3u;
  let r = (e >> 3u) & 7u;
  let dword = weights[base + (r >> 2u)][r & 3u];
  let a = weights[base + 2u + 3u * (k >> 1u) + (k & 1u)];
  let b = weights[base + 4u + 3u * (k >> 1u)];
  let q = weights[base + 8u + 2u * j + (r >> 2u)][r & 3u];
  return q4kr_row(q, q4kr_scale_min(dword, a, b, s, r));
}

fn load_w4(e: u32) -> vec4<f32> {
  let w = load_w8(e & ~7u);
  return select(w.hi, w.lo, (e & 4u) == 0u);
}
