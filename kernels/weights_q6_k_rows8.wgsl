// Weight loaders for GGML Q6_K weights repacked in 8-row blocks (src/gpu/resident.ts
// repackQ6KRows8; only matmul reads them, with BLOCKED = 1): elements are addressed in the rows8
// order of bf16 rows8 weights (matmul.wgsl), and each block of 8 rows keeps, per super-block of 256
// columns, the same 1680 bytes as its 8 GGML blocks, as 105 vec4<u32>: the 8 rows' f16 d (row r in
// word r / 2, half r % 2); for each pair of 16-column sub-blocks, the 8 rows' int8 scales of the
// first (.xy, row r in byte r) and of the second (.zw); then for each chunk j of 8 columns three
// vec4: the 8 low nibbles of rows 0..3 (one word a row, column i in bits 4i..4i+3), of rows 4..7,
// and the 2 high bits of all 8 rows (row r in word r / 2, half r % 2, column i in bits 2i..2i+1).
// Element (row r, column k) is (d_r * sc) * (q - 32), as GGML's Q6_K (and weights_q6_k.wgsl)
// computes it, so both layouts give the same values. load_block8(e), at the first element of a
// chunk's row 0, reads the chunk's 8 rows with 5 vector loads (8 of bf16 rows8; Block8 is
// matmul.wgsl's); load_w8 / load_w4 read one row's elements.

alias WeightWord = vec4<u32>;

struct W8 {
  lo: vec4<f32>,
  hi: vec4<f32>,
}

// The vec4 index of element e's super-block of 8 rows x 256 columns (2048 elements, 105 vec4).
fn q6r_base(e: u32) -> u32 {
  return (e >> 11u) * 105u;
}

// d_r * sc for row r of a chunk j: d from the d vec4, sc from the scales vec4 of j's sub-block pair.
fn q6r_scale(dv: vec4<u32>, sv: vec4<u32>, j: u32, r: u32) -> f32 {
  let dh = unpack2x16float(dv[r >> 1u]);
  let d = select(dh.x, dh.y, (r & 1u) != 0u);
  // sub-block j / 2: the pair's first (.xy) or second (.zw); row r in byte r of those 8 bytes
  let w = sv[((j >> 1u) & 1u) * 2u + (r >> 2u)];
  let sc = extractBits(bitcast<i32>(w), (r & 3u) * 8u, 8u);
  return d * f32(sc);
}

// Row r's 8 values of a chunk: its low nibbles' word, its high bits' 16 bits, its d * sc.
fn q6r_row(ql: u32, qh: u32, ds: f32) -> W8 {
  let lo4 = (vec4<u32>(ql) >> vec4<u32>(0u, 4u, 8u, 12u)) & vec4<u32>(15u);
  let hi4 = (vec4<u32>(ql) >> vec4<u32>(16u, 20u, 24u, 28u)) & vec4<u32>(15u);
  let lh = ((vec4<u32>(qh) >> vec4<u32>(0u, 2u, 4u, 6u)) & vec4<u32>(3u)) << vec4<u32>(4u);
  let hh = ((vec4<u32>(qh) >> vec4<u32>(8u, 10u, 12u, 14u)) & vec4<u32>(3u)) << vec4<u32>(4u);
  return W8(
    ds * vec4<f32>(vec4<i32>(lo4 | lh) - vec4<i32>(32)),
    ds * vec4<f32>(vec4<i32>(hi4 | hh) - vec4<i32>(32)),
  );
}

// The high-bits half-word of row r from the chunk's high-bits vec4.
fn q6r_qh(hv: vec4<u32>, r: u32) -> u32 {
  return (hv[r >> 1u] >> ((r & 1u) * 16u)) & 0xffffu;
}

fn load_block8(e: u32) -> Block8 {
  let base = q6r_base(e);
  let j = (e & 2047u) >> 6u; // chunk of 8 columns in the super-block
  let dv = weights[base];
  let sv = weights[base + 1u + (j >> 2u)];
  let at = base + 9u + j * 3u;
  let l0 = weights[at];
  let l1 = weights[at + 1u];
  let hv = weights[at + 2u];
  return Block8(
    q6r_row(l0.x, q6r_qh(hv, 0u), q6r_scale(dv, sv, j, 0u)),
    q6r_row(l0.y, q6r_qh(hv, 1u), q6r_scale(dv, sv, j, 1u)),
    q6r_row(l0.z, q6r_qh(hv, 2u), q6r_scale(dv, sv, j, 2u)),
    q6r_row(l0.w, q6r_qh(hv, 3u), q6r_scale(dv, sv, j, 3u)),
    q6r_row(l1.x, q6r_qh(hv, 4u), q6r_scale(dv, sv, j, 4u)),
    q6r_row(l1.y, q6r_qh(hv, 5u), q6r_scale(dv, sv, j, 5u)),
    q6r_row(l1.z, q6r_qh(hv, 6u), q6r_scale(dv, sv, j, 6u)),
    q6r_row(l1.w, q6r_qh(hv, 7u), q6r_scale(dv, sv, j, 7u)),
  );
}

fn load_w8(e: u32) -> W8 {
  let base = q6r_base(e);
  let j = (e & 2047u) >> 6u;
  let r = (e >> 3u) & 7u;
  let at = base + 9u + j * 3u;
  let lv = weights[at + (r >> 2u)];
  let ds = q6r_scale(weights[base], weights[base + 1u + (j >> 2u)], j, r);
  return q6r_row(lv[r & 3u], q6r_qh(weights[at + 2u], r), ds);
}

fn load_w4(e: u32) -> vec4<f32> {
  let w = load_w8(e & ~7u);
  return select(w.hi, w.lo, (e & 4u) == 0u);
}
