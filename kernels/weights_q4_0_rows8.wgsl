// Weight loaders for GGML Q4_0 weights repacked in 8-row blocks (src/gpu/resident.ts
// repackQ4Rows8; only matmul reads them, with BLOCKED = 1): elements are addressed in the rows8
// order of bf16 rows8 weights (matmul.wgsl), and each block of 8 rows keeps, per group of 32
// columns, the same 144 bytes as its 8 GGML blocks, as 9 vec4<u32>: the 8 rows' f16 d (row r in
// word r / 2, half r % 2), then for each chunk j of 8 columns two vec4 of the rows' 8 nibbles (one
// word a row, column i in bits 4i..4i+3; rows 0..3, then 4..7). Element (row r, column k) is
// (q - 8) * d_r, as GGML's Q4_0 (and weights_q4_0.wgsl) computes it. load_block8(e), at the first
// element of a chunk's row 0, reads the chunk's 8 rows with 3 vector loads (8 of bf16 rows8; Block8
// is matmul.wgsl's); load_w8 / load_w4 read one row's elements.

alias WeightWord = vec4<u32>;

struct W8 {
  lo: vec4<f32>,
  hi: vec4<f32>,
}

// Row r's d from the d vec4.
fn q4r_d(dv: vec4<u32>, r: u32) -> f32 {
  let h = unpack2x16float(dv[r >> 1u]);
  return select(h.x, h.y, (r & 1u) != 0u);
}

// A row's 8 values from its nibbles' word and d.
fn q4r_row(q: u32, d: f32) -> W8 {
  let lo = (vec4<u32>(q) >> vec4<u32>(0u, 4u, 8u, 12u)) & vec4<u32>(15u);
  let hi = (vec4<u32>(q) >> vec4<u32>(16u, 20u, 24u, 28u)) & vec4<u32>(15u);
  return W8(
    vec4<f32>(vec4<i32>(lo) - vec4<i32>(8)) * d,
    vec4<f32>(vec4<i32>(hi) - vec4<i32>(8)) * d,
  );
}

fn load_block8(e: u32) -> Block8 {
  let base = (e >> 8u) * 9u;
  let at = base + 1u + ((e & 255u) >> 6u) * 2u;
  let dv = weights[base];
  let q0 = weights[at];
  let q1 = weights[at + 1u];
  return Block8(
    q4r_row(q0.x, q4r_d(dv, 0u)),
    q4r_row(q0.y, q4r_d(dv, 1u)),
    q4r_row(q0.z, q4r_d(dv, 2u)),
    q4r_row(q0.w, q4r_d(dv, 3u)),
    q4r_row(q1.x, q4r_d(dv, 4u)),
    q4r_row(q1.y, q4r_d(dv, 5u)),
    q4r_row(q1.z, q4r_d(dv, 6u)),
    q4r_row(q1.w, q4r_d(dv, 7u)),
  );
}

fn load_w8(e: u32) -> W8 {
  let base = (e >> 8u) * 9u;
  let r = (e >> 3u) & 7u;
  let q = weights[base + 1u + ((e & 255u) >> 6u) * 2u + (r >> 2u)][r & 3u];
  return q4r_row(q, q4r_d(weights[base], r));
}

fn load_w4(e: u32) -> vec4<f32> {
  let w = load_w8(e & ~7u);
  return select(w.hi, w.lo, (e & 4u) == 0u);
}
