// out[t, out_offset + n] (+)= sum_k x[t, k] * W[n, k] for prefill steps, as GPUs multiply
// matrices: a workgroup owns a tile of BN rows x BT tokens and walks K in slices of BK, staging
// each slice of W and of x in workgroup memory (read from memory once per tile, by consecutive
// lanes), from which each lane accumulates 4 rows x 4 tokens. matmul.wgsl's tiles live in a lane
// (llvmpipe, whose barriers cost more than its loads). K a multiple of BK; same Params, bindings
// and output rules as matmul.wgsl.

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

// Weight layout: 0 rows (row-major), 1 rows8 (matmul.wgsl).
override BLOCKED: u32 = 0u;
// Lanes along each side of the tile (set per adapter: 16 on GPUs, 8 on llvmpipe, which takes
// minutes to compile a 256-lane workgroup); each lane computes 4 rows x 4 tokens.
const TM: u32 = 16u;
const WG: u32 = TM * TM;
const BN: u32 = 4u * TM; // rows a tile
const BT: u32 = 4u * TM; // tokens a tile
const BK: u32 = 32u; // columns a slice

// The slice, column-major: ws[k * BN + n] = W[n0 + n, k0 + k], xs[k * BT + t] = x[t0 + t, k0 + k]
var<workgroup> ws: array<f32, BK * BN>;
var<workgroup> xs: array<f32, BK * BT>;

@compute @workgroup_size(WG)
fn main(
  @builtin(workgroup_id) wid: vec3<u32>,
  @builtin(num_workgroups) nwg: vec3<u32>,
  @builtin(local_invocation_index) lid: u32,
) {
  let row_tiles = (p.N + BN - 1u) / BN;
  let g = group_index(wid, nwg);
  let n0 = (g % row_tiles) * BN;
  let t0 = (g / row_tiles) * BT;
  let T = step.n_tokens;
  if (t0 >= T) { // the whole workgroup (t0 is uniform)
    return;
  }
  let K = p.K;
  let k4 = K / 4u;
  // this lane's outputs: rows n0 + rn .. + 3, tokens t0 + tn .. + 3, accumulated in acc<j>[i]
  // (token tn + j, row rn + i; vectors, not an indexed private array)
  let rn = (lid % TM) * 4u;
  let tn = (lid / TM) * 4u;
  var acc0 = vec4<f32>(0.0);
  var acc1 = vec4<f32>(0.0);
  var acc2 = vec4<f32>(0.0);
  var acc3 = vec4<f32>(0.0);
  for (var k0 = 0u; k0 < K; k0 += BK) {
    // W's slice: BN rows x BK / 8 chunks of 8 columns, consecutive lanes through consecutive
    // memory (rows8: a block's 8 rows of a chunk, then the block's next chunk; rows: a row's
    // chunks)
    for (var q = lid; q < BN * (BK / 8u); q += WG) {
      var n: u32; // row in the tile
      var c: u32; // chunk in the slice
      var e: u32;
      if (BLOCKED == 1u) {
        n = (q / 32u) * 8u + q % 8u;
        c = (q % 32u) / 8u;
        let block = min(n0 / 8u + q / 32u, (p.N - 1u) / 8u); // blocks past N's: never stored
        e = p.w_offset + block * 8u * K + k0 * 8u + c * 64u + (q % 8u) * 8u;
      } else {
        n = q / (BK / 8u);
        c = q % (BK / 8u);
        e = p.w_offset + min(n0 + n, p.N - 1u) * K + k0 + c * 8u; // rows past N: never stored
      }
      let w = load_w8(e);
      let at = c * 8u * BN + n;
      ws[at] = w.lo.x;
      ws[at + BN] = w.lo.y;
      ws[at + 2u * BN] = w.lo.z;
      ws[at + 3u * BN] = w.lo.w;
      ws[at + 4u * BN] = w.hi.x;
      ws[at + 5u * BN] = w.hi.y;
      ws[at + 6u * BN] = w.hi.z;
      ws[at + 7u * BN] = w.hi.w;
    }
    // x's slice: BT tokens x BK / 4 chunks of 4 columns (tokens past T: never stored)
    for (var q = lid; q < BT * (BK / 4u); q += WG) {
      let t = q / (BK / 4u);
      let c = q % (BK / 4u);
      let v = x[min(t0 + t, T - 1u) * k4 + k0 / 4u + c];
      let at = c * 4u * BT + t;
      xs[at] = v.x;
      xs[at + BT] = v.y;
      xs[at + 2u * BT] = v.z;
      xs[at + 3u * BT] = v.w;
    }
    workgroupBarrier();
    // the slice's sums apart, then added to the running ones (two levels: f32 rounding as in
    // matmul.wgsl's chunks, not one long chain)
    var s0 = vec4<f32>(0.0);
    var s1 = vec4<f32>(0.0);
    var s2 = vec4<f32>(0.0);
    var s3 = vec4<f32>(0.0);
    for (var k = 0u; k < BK; k++) {
      let a = vec4<f32>(ws[k * BN + rn], ws[k * BN + rn + 1u], ws[k * BN + rn + 2u], ws[k * BN + rn + 3u]);
      s0 += a * xs[k * BT + tn];
      s1 += a * xs[k * BT + tn + 1u];
      s2 += a * xs[k * BT + tn + 2u];
      s3 += a * xs[k * BT + tn + 3u];
    }
    acc0 += s0;
    acc1 += s1;
    acc2 += s2;
    acc3 += s3;
    workgroupBarrier();
  }
  emit(t0 + tn, n0 + rn, acc0);
  emit(t0 + tn + 1u, n0 + rn, acc1);
  emit(t0 + tn + 2u, n0 + rn, acc2);
  emit(t0 + tn + 3u, n0 + rn, acc3);
}

// Rows n .. n + 3 of token t (those inside the step and the matrix) to their outputs.
fn emit(t: u32, n: u32, v: vec4<f32>) {
  if (t >= step.n_tokens) {
    return;
  }
  for (var i = 0u; i < 4u; i++) {
    if (n + i < p.N) {
      store_row(t, n + i, v[i]); // (matmul_store.wgsl)
    }
  }
}
