// out[t, out_offset + n] (+)= sum_k x[t, k] * W[n, k]: one output row n per invocation, and
// TOKENS tokens per invocation so that each weight load (load_w4, prepended by dtype) is reused.

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
@group(0) @binding(3) var<storage, read> weights: array<u32>; // W [N, K] packed by dtype
@group(0) @binding(4) var<storage, read_write> out: array<f32>; // [T, out_stride]

// Tokens per invocation: 1 for decode, more for prefill (set per pipeline).
override TOKENS: u32 = 1u;
// Upper bound of TOKENS (size of the accumulator array).
const MAX_TOKENS: u32 = 8u;
const WG: u32 = 64u;

@compute @workgroup_size(WG)
fn main(
  @builtin(workgroup_id) wid: vec3<u32>,
  @builtin(num_workgroups) nwg: vec3<u32>,
  @builtin(local_invocation_index) lid: u32,
) {
  let row_groups = (p.N + WG - 1u) / WG;
  let g = group_index(wid, nwg);
  let n = (g % row_groups) * WG + lid;
  let t0 = (g / row_groups) * TOKENS;
  let T = step.n_tokens;
  if (n >= p.N || t0 >= T) {
    return;
  }
  let k4 = p.K / 4u;
  var tok: array<u32, MAX_TOKENS>;
  var acc: array<vec4<f32>, MAX_TOKENS>;
  for (var j = 0u; j < TOKENS; j++) {
    tok[j] = min(t0 + j, T - 1u) * k4; // past the last token: recompute it, never store
    acc[j] = vec4<f32>(0.0);
  }
  let w_row = p.w_offset + n * p.K;
  for (var c = 0u; c < k4; c++) {
    let w = load_w4(w_row + c * 4u);
    for (var j = 0u; j < TOKENS; j++) {
      acc[j] += w * x[tok[j] + c];
    }
  }
  for (var j = 0u; j < TOKENS; j++) {
    let t = t0 + j;
    if (t < T) {
      let o = t * p.out_stride + p.out_offset + n;
      let s = (acc[j].x + acc[j].y) + (acc[j].z + acc[j].w);
      if (p.accumulate != 0u) {
        out[o] += s;
      } else {
        out[o] = s;
      }
    }
  }
}
