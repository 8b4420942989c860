// Weight loaders for GGML Q8_0 weights repacked in 8-row blocks (src/gpu/resident.ts
// repackQ8Rows8; only matmul reads them, with BLOCKED = 1): elements are addressed in the rows8
// order of bf16 rows8 weights (matmul.wgsl), and each block of 8 rows keeps, per group of 32
// columns, 17 vec4<u32>: first the 8 rows' f16 scales d (row r in word r / 2, half r % 2), then
// for each chunk j of 8 columns, rows 2i and 2i + 1 (i = 0..3) in one vec4: .xy the 8 int8 of row
// 2i, .zw those of row 2i + 1. Element (row r, column k) is d_r * qs, as GGML's Q8_0 (and
// weights_q8_0.wgsl) computes it, so both layouts give the same values. load_block8(e), at the
// first element of a chunk's row 0, reads the chunk's 8 rows with 5 vector loads (8 of bf16
// rows8; Block8 is matmul.wgsl's); load_w8 / load_w4 read one row's elements.

alias WeightWord = vec4<u32>;

struct W8 {
  lo: vec4<f32>,
  hi: vec4<f32>,
}

// The four int8 of a little-endian word, as f32.
fn q8r_i8x4(w: u32) -> vec4<f32> {
  let v = bitcast<vec4<i32>>(vec4<u32>(w << 24u, w << 16u, w << 8u, w));
  return vec4<f32>(v >> vec4<u32>(24u));
}

// The vec4 index of element e's group of 32 columns (17 vec4 per group of 256 elements).
fn q8r_group(e: u32) -> u32 {
  return (e >> 8u) * 17u;
}

// Row r's 8 values of a chunk from the vec4 holding its pair of rows and the scales' vec4.
fn q8r_row(pair: vec4<u32>, scales: vec4<u32>, r: u32) -> W8 {
  let s = unpack2x16float(scales[r >> 1u]);
  let d = select(s.x, s.y, (r & 1u) != 0u);
  let q = select(pair.xy, pair.zw, (r & 1u) != 0u);
  return W8(q8r_i8x4(q.x) * d, q8r_i8x4(q.y) * d);
}

fn load_block8(e: u32) -> Block8 {
  let g = q8r_group(e);
  let at = g + 1u + ((e & 255u) >> 6u) * 4u;
  let s = weights[g];
  let p0 = weights[at];
  let p1 = weights[at + 1u];
  let p2 = weights[at + 2u];
  let p3 = weights[at + 3u];
  return Block8(
    q8r_row(p0, s, 0u),
    q8r_row(p0, s, 1u),
    q8r_row(p1, s, 2u),
    q8r_row(p1, s, 3u),
    q8r_row(p2, s, 4u),
    q8r_row(p2, s, 5u),
    q8r_row(p3, s, 6u),
    q8r_row(p3, s, 7u),
  );
}

fn load_w8(e: u32) -> W8 {
  let g = q8r_group(e);
  let r = (e >> 3u) & 7u;
  return q8r_row(weights[g + 1u + ((e & 255u) >> 6u) * 4u + (r >> 1u)], weights[g], r);
}

fn load_w4(e: u32) -> vec4<f32> {
  let w = load_w8(e & ~7u);
  return select(w.hi, w.lo, (e & 4u) == 0u);
}
