// out[t, out_offset + n] (+)= sum_k x[t, k] * W[n, k] for steps of at most MAX_TOKENS tokens
// (decode), the way a GPU reads memory: a workgroup owns 8 rows, its lanes read consecutive 16-byte
// words of them (one coalesced stream), each lane keeps partial sums of its row, and the workgroup
// adds its lanes' partials in workgroup memory. matmul.wgsl gives a lane 8 whole rows instead,
// which llvmpipe wants (each storage load a gather) and a GPU does not (lanes 8 rows apart).
// Same Params, bindings and output rules as matmul.wgsl.

struct Params {
  K: u32,
  N: u32,
  out_stride: u32,
  out_offset: u32,
  w_offset: u32, // element [0, 0] of W, in elements of its dtype
  accumulate: u32,
  split_k: u32,
  split_v: u32,
}

@group(0) @binding(1) var<uniform> p: Params;
@group(0) @binding(2) var<storage, read> x: array<vec4<f32>>; // [T, K/4]
@group(0) @binding(3) var<storage, read> weights: array<WeightWord>; // W [N, K] packed by dtype
@group(0) @binding(4) var<storage, read_write> out: array<f32>; // [T, out_stride]
@group(0) @binding(5) var<storage, read_write> out_k: array<f32>; // [T, split_v - split_k]
@group(0) @binding(6) var<storage, read_write> out_v: array<f32>; // [T, N - split_v]

// Tokens a workgroup computes (set per pipeline, <= MAX_TOKENS): the step's tokens past them take
// further workgroups.
override TOKENS: u32 = 1u;
// Weight layout: 0 rows (row-major), 1 rows8 (matmul.wgsl): element of row n, column k at
// ((n / 8) * K + k - k % 8) * 8 + (n % 8) * 8 + k % 8.
override BLOCKED: u32 = 0u;
const MAX_TOKENS: u32 = 8u;
// Rows a workgroup owns (one rows8 block) and its lanes: LANES a row, each reading every LANES-th
// chunk of 8 columns.
const ROWS: u32 = 8u;
const WG: u32 = 256u;
const LANES: u32 = WG / ROWS;

// partial[j * WG + r * LANES + l]: token t0 + j, row n0 + r, lane l of the row
var<workgroup> partial: array<f32, WG * MAX_TOKENS>;

fn dot8(w: W8, xa: vec4<f32>, xb: vec4<f32>) -> f32 {
  return dot(w.lo, xa) + dot(w.hi, xb);
}

@compute @workgroup_size(WG)
fn main(
  @builtin(workgroup_id) wid: vec3<u32>,
  @builtin(num_workgroups) nwg: vec3<u32>,
  @builtin(local_invocation_index) lid: u32,
) {
  let row_sets = (p.N + ROWS - 1u) / ROWS;
  let g = group_index(wid, nwg);
  let n0 = (g % row_sets) * ROWS;
  let t0 = (g / row_sets) * TOKENS;
  let T = step.n_tokens;
  if (t0 >= T) { // the whole workgroup (t0 is uniform)
    return;
  }
  let K = p.K;
  let k4 = K / 4u;
  // rows8: consecutive lanes read a block's 8 rows of one chunk, then the next chunk (64
  // elements a chunk of the block); rows: consecutive lanes read consecutive chunks of one row
  var r: u32;
  var l: u32;
  var first: u32; // element of this lane's first chunk
  var stride: u32; // elements from one of its chunks to its next
  if (BLOCKED == 1u) {
    r = lid % ROWS;
    l = lid / ROWS;
    first = p.w_offset + n0 * K + l * ROWS * 8u + r * 8u;
    stride = LANES * ROWS * 8u;
  } else {
    r = lid / LANES;
    l = lid % LANES;
    first = p.w_offset + min(n0 + r, p.N - 1u) * K + l * 8u; // rows past N: valid, never stored
    stride = LANES * 8u;
  }
  var acc: array<f32, MAX_TOKENS>;
  for (var j = 0u; j < TOKENS; j++) {
    acc[j] = 0.0;
  }
  let chunks = K / 8u;
  var e = first;
  for (var c = l; c < chunks; c += LANES) {
    let w = load_w8(e);
    e += stride;
    for (var j = 0u; j < TOKENS; j++) {
      let xi = min(t0 + j, T - 1u) * k4 + c * 2u; // tokens past T: recomputed, never stored
      acc[j] += dot8(w, x[xi], x[xi + 1u]);
    }
  }
  let k8 = chunks * 8u;
  if (k8 != K && l == 0u) { // K = 8m + 4 (rows layout only): the row's last four columns
    let w = load_w4(p.w_offset + min(n0 + r, p.N - 1u) * K + k8);
    for (var j = 0u; j < TOKENS; j++) {
      acc[j] += dot(w, x[min(t0 + j, T - 1u) * k4 + k8 / 4u]);
    }
  }
  let slot = r * LANES + l;
  for (var j = 0u; j < TOKENS; j++) {
    partial[j * WG + slot] = acc[j];
  }
  workgroupBarrier();
  for (var s = LANES / 2u; s > 0u; s >>= 1u) {
    if (l < s) {
      for (var j = 0u; j < TOKENS; j++) {
        partial[j * WG + slot] += partial[j * WG + slot + s];
      }
    }
    workgroupBarrier();
  }
  let n = n0 + r;
  if (l != 0u || n >= p.N) {
    return;
  }
  for (var j = 0u; j < TOKENS; j++) {
    let t = t0 + j;
    if (t >= T) {
      break;
    }
    store_row(t, n, partial[j * WG + slot]); // (matmul_store.wgsl)
  }
}
