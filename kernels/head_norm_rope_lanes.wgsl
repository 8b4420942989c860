// Per-head RMSNorm then rotate-half RoPE of this step's queries and keys, in place, one lane per
// (token, head) row (head_norm_rope.wgsl spends a workgroup of 64 on each: on llvmpipe its eight
// barriers a row cost more than the row's arithmetic). The row's sum of squares is added in
// workgroup_sum.wgsl's order (lane_sum.wgsl), so the results equal head_norm_rope.wgsl's, and
// rmsnorm then rope, bit for bit. Rows: the q heads of a token first, then its k heads.

struct Params {
  q_heads: u32,
  k_heads: u32,
  head_dim: u32,
  eps: f32,
}

@group(0) @binding(1) var<uniform> p: Params;
@group(0) @binding(2) var<storage, read> q_weight: array<f32>; // [head_dim]
@group(0) @binding(3) var<storage, read> k_weight: array<f32>; // [head_dim]
@group(0) @binding(4) var<storage, read> table: array<f32>; // [maxPos, head_dim]: cos | sin
@group(0) @binding(5) var<storage, read_write> q: array<f32>; // [T, q_heads*head_dim]
@group(0) @binding(6) var<storage, read_write> k: array<f32>; // [T, k_heads*head_dim]

const WG: u32 = 64u;

fn load(is_q: bool, i: u32) -> f32 {
  if (is_q) {
    return q[i];
  }
  return k[i];
}

fn store(is_q: bool, i: u32, v: f32) {
  if (is_q) {
    q[i] = v;
  } else {
    k[i] = v;
  }
}

@compute @workgroup_size(WG)
fn main(
  @builtin(workgroup_id) wid: vec3<u32>,
  @builtin(num_workgroups) nwg: vec3<u32>,
  @builtin(local_invocation_index) lid: u32,
) {
  let heads = p.q_heads + p.k_heads;
  let row = group_index(wid, nwg) * WG + lid;
  if (row >= step.n_tokens * heads) {
    return;
  }
  let t = row / heads;
  let h = row % heads;
  let is_q = h < p.q_heads;
  let D = p.head_dim;
  let base = select((t * p.k_heads + h - p.q_heads) * D, (t * p.q_heads + h) * D, is_q);
  var part: array<f32, LANE_PARTS>;
  for (var i = 0u; i < D; i++) {
    let v = load(is_q, base + i);
    part[i % LANE_PARTS] += v * v;
  }
  let inv = 1.0 / sqrt(lane_sum_total(part) / f32(D) + p.eps);
  let half = D / 2u;
  let pos = step.tokens[t].y * D;
  for (var i = 0u; i < half; i++) {
    let x1 = load(is_q, base + i) * inv * select(k_weight[i], q_weight[i], is_q);
    let x2 = load(is_q, base + half + i) * inv * select(k_weight[half + i], q_weight[half + i], is_q);
    let c = table[pos + i];
    let s = table[pos + half + i];
    store(is_q, base + i, x1 * c - x2 * s);
    store(is_q, base + half + i, x2 * c + x1 * s);
  }
}
