// out[t, out_offset + n] (+)= sum_k x[t, k] * W[n, k]. Each invocation computes ROWS consecutive
// rows n for TOKENS consecutive tokens, so every weight load (load_w8, prepended by dtype) serves
// TOKENS tokens and every x load serves ROWS rows: on llvmpipe each storage load is a gather, and
// sharing them is what makes this kernel fast (8 x 8 measured 1.6x faster than 4 x 8 in prefill).

struct Params {
  K: u32,
  N: u32,
  out_stride: u32,
  out_offset: u32,
  w_offset: u32, // element [0, 0] of W, in elements of its dtype
  accumulate: u32,
  // Rows [split_k, split_v) go to out_k and [split_v, N) to out_v, each [T, its rows] (one matmul
  // for q, k and v from their rows stacked); both N: every row to out.
  split_k: u32,
  split_v: u32,
}

@group(0) @binding(1) var<uniform> p: Params;
@group(0) @binding(2) var<storage, read> x: array<vec4<f32>>; // [T, K/4]
@group(0) @binding(3) var<storage, read> weights: array<WeightWord>; // W [N, K] packed by dtype
@group(0) @binding(4) var<storage, read_write> out: array<f32>; // [T, out_stride]
@group(0) @binding(5) var<storage, read_write> out_k: array<f32>; // [T, split_v - split_k]
@group(0) @binding(6) var<storage, read_write> out_v: array<f32>; // [T, N - split_v]

// Tokens per invocation: 1 for decode, more for prefill (set per pipeline, <= MAX_TOKENS).
override TOKENS: u32 = 1u;
// Weight layout (set per pipeline): 0 rows (W row-major), 1 rows8: each block of 8 rows stored
// column chunk by column chunk, the 8 rows' 8 elements of a chunk together (element of row n,
// column k at ((n / 8) * K + k - k % 8) * 8 + (n % 8) * 8 + k % 8; K a multiple of 8, the last
// block padded), so an invocation's 8 rows are one stream through memory instead of 8.
override BLOCKED: u32 = 0u;
const MAX_TOKENS: u32 = 16u;
// Rows per invocation: two vec4 accumulators (lo: rows 0..3, hi: rows 4..7) per token.
const ROWS: u32 = 8u;
// Small workgroups: llvmpipe hands whole workgroups to its threads, and a decode matvec of 2048
// rows has only 256 invocations.
const WG: u32 = 16u;

// The 8 rows' values of a rows8 chunk, as load_block8 returns them (the loader's, or
// weights_block8.wgsl's generic one).
struct Block8 {
  r0: W8,
  r1: W8,
  r2: W8,
  r3: W8,
  r4: W8,
  r5: W8,
  r6: W8,
  r7: W8,
}

fn dot8(w: W8, xa: vec4<f32>, xb: vec4<f32>) -> f32 {
  return dot(w.lo, xa) + dot(w.hi, xb);
}

// Element offset of column 0 of row n0 + r of W, rows past N clamped to N-1 (valid memory, never
// stored); in the rows layout column c of the row is at row_start + c, in rows8 the chunk of
// columns c..c+7 of the block's 8 rows starts at row_start(n0, 0) + 8 c.
fn row_start(n0: u32, r: u32) -> u32 {
  let n = min(n0 + r, p.N - 1u);
  if (BLOCKED == 1u) {
    return p.w_offset + (n / 8u) * 8u * p.K + (n % 8u) * 8u;
  }
  return p.w_offset + n * p.K;
}

@compute @workgroup_size(WG)
fn main(
  @builtin(workgroup_id) wid: vec3<u32>,
  @builtin(num_workgroups) nwg: vec3<u32>,
  @builtin(local_invocation_index) lid: u32,
) {
  let id = group_index(wid, nwg) * WG + lid;
  let row_sets = (p.N + ROWS - 1u) / ROWS;
  let n0 = (id % row_sets) * ROWS;
  let t0 = (id / row_sets) * TOKENS;
  let T = step.n_tokens;
  if (t0 >= T) {
    return;
  }
  let K = p.K;
  let k4 = K / 4u;
  let r0 = row_start(n0, 0u);
  let r1 = row_start(n0, 1u);
  let r2 = row_start(n0, 2u);
  let r3 = row_start(n0, 3u);
  let r4 = row_start(n0, 4u);
  let r5 = row_start(n0, 5u);
  let r6 = row_start(n0, 6u);
  let r7 = row_start(n0, 7u);
  var lo: array<vec4<f32>, MAX_TOKENS>; // lo[j][r]: token t0 + j, row n0 + r
  var hi: array<vec4<f32>, MAX_TOKENS>; // hi[j][r]: token t0 + j, row n0 + 4 + r
  for (var j = 0u; j < TOKENS; j++) {
    lo[j] = vec4<f32>(0.0);
    hi[j] = vec4<f32>(0.0);
  }
  let k8 = K & ~7u;
  for (var c = 0u; c < k8; c += 8u) {
    var w0: W8;
    var w1: W8;
    var w2: W8;
    var w3: W8;
    var w4: W8;
    var w5: W8;
    var w6: W8;
    var w7: W8;
    if (BLOCKED == 1u) { // the chunk's 8 rows together (weights_block8.wgsl, or the loader's own)
      let b = load_block8(r0 + c * 8u);
      w0 = b.r0;
      w1 = b.r1;
      w2 = b.r2;
      w3 = b.r3;
      w4 = b.r4;
      w5 = b.r5;
      w6 = b.r6;
      w7 = b.r7;
    } else {
      w0 = load_w8(r0 + c);
      w1 = load_w8(r1 + c);
      w2 = load_w8(r2 + c);
      w3 = load_w8(r3 + c);
      w4 = load_w8(r4 + c);
      w5 = load_w8(r5 + c);
      w6 = load_w8(r6 + c);
      w7 = load_w8(r7 + c);
    }
    for (var j = 0u; j < TOKENS; j++) {
      let xi = min(t0 + j, T - 1u) * k4 + c / 4u; // tokens past T: recomputed, never stored
      let xa = x[xi];
      let xb = x[xi + 1u];
      lo[j] += vec4<f32>(dot8(w0, xa, xb), dot8(w1, xa, xb), dot8(w2, xa, xb), dot8(w3, xa, xb));
      hi[j] += vec4<f32>(dot8(w4, xa, xb), dot8(w5, xa, xb), dot8(w6, xa, xb), dot8(w7, xa, xb));
    }
  }
  if (k8 != K) { // K = 8m + 4: the last four columns (rows layout only)
    let wl = mat4x4<f32>(load_w4(r0 + k8), load_w4(r1 + k8), load_w4(r2 + k8), load_w4(r3 + k8));
    let wh = mat4x4<f32>(load_w4(r4 + k8), load_w4(r5 + k8), load_w4(r6 + k8), load_w4(r7 + k8));
    for (var j = 0u; j < TOKENS; j++) {
      let xv = x[min(t0 + j, T - 1u) * k4 + k8 / 4u];
      lo[j] += xv * wl;
      hi[j] += xv * wh;
    }
  }
  for (var j = 0u; j < TOKENS; j++) {
    let t = t0 + j;
    if (t >= T) {
      break;
    }
    for (var r = 0u; r < ROWS; r++) {
      if (n0 + r < p.N) {
        store_row(t, n0 + r, select(hi[j][r - 4u], lo[j][r], r < 4u)); // (matmul_store.wgsl)
      }
    }
  }
}
