// Per-head RMSNorm then rotate-half RoPE of this step's queries and keys, in place: one workgroup
// per (token, head) row, the q heads of a token first, then its k heads. The same arithmetic as
// rmsnorm.wgsl followed by rope.wgsl (x * inv * weight[i], then x1*cos - x2*sin, x2*cos + x1*sin),
// in one dispatch instead of four.

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
var<workgroup> normed: array<f32, MAX_HEAD_DIM>;

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
  let row = group_index(wid, nwg);
  if (row >= step.n_tokens * heads) {
    return;
  }
  let t = row / heads;
  let h = row % heads;
  let is_q = h < p.q_heads;
  let D = p.head_dim;
  let base = select((t * p.k_heads + h - p.q_heads) * D, (t * p.q_heads + h) * D, is_q);
  var ss = 0.0;
  for (var i = lid; i < D; i += WG) {
    let v = load(is_q, base + i);
    ss += v * v;
  }
  let inv = 1.0 / sqrt(workgroup_sum(lid, ss) / f32(D) + p.eps);
  for (var i = lid; i < D; i += WG) {
    let w = select(k_weight[i], q_weight[i], is_q);
    normed[i] = load(is_q, base + i) * inv * w;
  }
  workgroupBarrier();
  let half = D / 2u;
  let pos = step.tokens[t].y * D;
  for (var i = lid; i < half; i += WG) {
    let c = table[pos + i];
    let s = table[pos + half + i];
    let x1 = normed[i];
    let x2 = normed[i + half];
    store(is_q, base + i, x1 * c - x2 * s);
    store(is_q, base + half + i, x2 * c + x1 * s);
  }
}
