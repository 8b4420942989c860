// Weight loaders for GGML Q5_0 weights repacked in 8-row blocks (src/gpu/resident.ts
// repackQ5Rows8; only matmul reads them, with BLOCKED = 1): elements are addressed in the rows8
// order of bf16 rows8 weights (matmul.wgsl), and each block of 8 rows keeps, per group of 32
// columns, the same 176 bytes as its 8 GGML blocks, as 11 vec4<u32>: the 8 rows' f16 d (row r in
// word r / 2, half r % 2), their qh words (fifth bits, bit k for column k; rows 0..3, then 4..7),
// then for each chunk j of 8 columns two vec4 of the rows' 8 low nibbles (one word a row, column
// i in bits 4i..4i+3; rows 0..3, then 4..7). Element (row r, column k) is (q - 16) * d_r, as
// GGML's Q5_0 (and weights_q5_0.wgsl) computes it. load_block8(e), at the first element of a
// chunk's row 0, reads the chunk's 8 rows with 5 vector loads (8 of bf16 rows8; Block8 is
// matmul.wgsl's); load_w8 / load_w4 read one row's elements.

alias WeightWord = vec4<u32>;

struct W8 {
  lo: vec4<f32>,
  hi: vec4<f32>,
}

// Row r's d from the d vec4.
fn q5r_d(dv: vec4<u32>, r: u32) -> f32 {
  let h = unpack2x16float(dv[r >> 1u]);
  return select(h.x, h.y, (r & 1u) != 0u);
}

// A row's 8 values from its nibbles' word, its 8 fifth bits (bits 0..7 of h) and d.
fn q5r_row(q: u32, h: u32, d: f32) -> W8 {
  let lo = (vec4<u32>(q) >> vec4<u32>(0u, 4u, 8u, 12u)) & vec4<u32>(15u);
  let hi = (vec4<u32>(q) >> vec4<u32>(16u, 20u, 24u, 28u)) & vec4<u32>(15u);
  let lb = ((vec4<u32>(h) >> vec4<u32>(0u, 1u, 2u, 3u)) & vec4<u32>(1u)) << vec4<u32>(4u);
  let hb = ((vec4<u32>(h) >> vec4<u32>(4u, 5u, 6u, 7u)) & vec4<u32>(1u)) << vec4<u32>(4u);
  return W8(
    vec4<f32>(vec4<i32>(lo | lb) - vec4<i32>(16)) * d,
    vec4<f32>(vec4<i32>(hi | hb) - vec4<i32>(16)) * d,
  );
}

fn load_block8(e: u32) -> Block8 {
  let base = (e >> 8u) * 11u;
  let j = (e & 255u) >> 6u;
  let dv = weights[base];
  let h0 = weights[base + 1u] >> vec4<u32>(j * 8u);
  let h1 = weights[base + 2u] >> vec4<u32>(j * 8u);
  let q0 = weights[base + 3u + j * 2u];
  let q1 = weights[base + 4u + j * 2u];
  return Block8(
    q5r_row(q0.x, h0.x, q5r_d(dv, 0u)),
    q5r_row(q0.y, h0.y, q5r_d(dv, 1u)),
    q5r_row(q0.z, h0.z, q5r_d(dv, 2u)),
    q5r_row(q0.w, h0.w, q5r_d(dv, 3u)),
    q5r_row(q1.x, h1.x, q5r_d(dv, 4u)),
    q5r_row(q1.y, h1.y, q5r_d(dv, 5u)),
    q5r_row(q1.z, h1.z, q5r_d(dv, 6u)),
    q5r_row(q1.w, h1.w, q5r_d(dv, 7u)),
  );
}

fn load_w8(e: u32) -> W8 {
  let base = (e >> 8u) * 11u;
  let j = (e & 255u) >> 6u;
  let r = (e >> 3u) & 7u;
  let h = weights[base + 1u + (r >> 2u)][r & 3u] >> (j * 8u);
  let q = weights[base + 3u + j * 2u + (r >> 2u)][r & 3u];
  return q5r_row(q, h, q5r_d(weights[base], r));
}

fn load_w4(e: u32) -> vec4<f32> {
  let w = load_w8(e & ~7u);
  return select(w.hi, w.lo, (e & 4u) == 0u);
}
