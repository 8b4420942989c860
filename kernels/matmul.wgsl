// out[t, out_offset + n] (+)= sum_k x[t, k] * W[n, k]. Each invocation computes ROWS consecutive
// rows n for TOKENS consecutive tokens, so every weight load (load_w8, prepended by dtype) serves
// TOKENS tokens and every x load serves ROWS rows: on llvmpipe each storage load is a gather, and
// sharing them is what makes this kernel fast.

struct Params {
  K: u32,
  N: u32,
  out_stride: u32,
  out_offset: u32,
  w_offset: u32, // element [0, 0] of W, in elements of its dtype
  accumulate: u32,
  _pad0: u32,
  _pad1: u32,
}

@group(0) @binding(1) var<uniform> p: Params;
@group(0) @binding(2) var<storage, read> x: array<vec4<f32>>; // [T, K/4]
@group(0) @binding(3) var<storage, read> weights: array<WeightWord>; // W [N, K] packed by dtype
@group(0) @binding(4) var<storage, read_write> out: array<f32>; // [T, out_stride]

// Tokens per invocation: 1 for decode, more for prefill (set per pipeline, <= MAX_TOKENS).
override TOKENS: u32 = 1u;
const MAX_TOKENS: u32 = 8u;
// Rows per invocation (the four lanes of an accumulator).
const ROWS: u32 = 4u;
const WG: u32 = 64u;

// The four rows' dot products with one token's x[c..c+8).
fn dot4(w0: W8, w1: W8, w2: W8, w3: W8, xa: vec4<f32>, xb: vec4<f32>) -> vec4<f32> {
  return vec4<f32>(
    dot(w0.lo, xa) + dot(w0.hi, xb),
    dot(w1.lo, xa) + dot(w1.hi, xb),
    dot(w2.lo, xa) + dot(w2.hi, xb),
    dot(w3.lo, xa) + dot(w3.hi, xb),
  );
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
  // Rows past N re-read row N-1 (valid memory) and are never stored.
  let r0 = p.w_offset + min(n0, p.N - 1u) * K;
  let r1 = p.w_offset + min(n0 + 1u, p.N - 1u) * K;
  let r2 = p.w_offset + min(n0 + 2u, p.N - 1u) * K;
  let r3 = p.w_offset + min(n0 + 3u, p.N - 1u) * K;
  var acc: array<vec4<f32>, MAX_TOKENS>; // acc[j][r]: token t0 + j, row n0 + r
  for (var j = 0u; j < TOKENS; j++) {
    acc[j] = vec4<f32>(0.0);
  }
  let k8 = K & ~7u;
  for (var c = 0u; c < k8; c += 8u) {
    let w0 = load_w8(r0 + c);
    let w1 = load_w8(r1 + c);
    let w2 = load_w8(r2 + c);
    let w3 = load_w8(r3 + c);
    for (var j = 0u; j < TOKENS; j++) {
      let xi = min(t0 + j, T - 1u) * k4 + c / 4u; // tokens past T: recomputed, never stored
      acc[j] += dot4(w0, w1, w2, w3, x[xi], x[xi + 1u]);
    }
  }
  if (k8 != K) { // K = 8m + 4: the last four columns
    let w = mat4x4<f32>(load_w4(r0 + k8), load_w4(r1 + k8), load_w4(r2 + k8), load_w4(r3 + k8));
    for (var j = 0u; j < TOKENS; j++) {
      acc[j] += x[min(t0 + j, T - 1u) * k4 + k8 / 4u] * w;
    }
  }
  for (var j = 0u; j < TOKENS; j++) {
    let t = t0 + j;
    if (t >= T) {
      break;
    }
    let o = t * p.out_stride + p.out_offset + n0;
    for (var r = 0u; r < ROWS; r++) {
      if (n0 + r < p.N) {
        if (p.accumulate != 0u) {
          out[o + r] += acc[j][r];
        } else {
          out[o + r] = acc[j][r];
        }
      }
    }
  }
}
