// In-place rotate-half RoPE: one invocation per (token, head, i < head_dim/2) pair of elements.
// x1 = x[i], x2 = x[i + half]: x1' = x1*cos - x2*sin, x2' = x2*cos + x1*sin at token t's position.

struct Params {
  heads: u32,
  head_dim: u32,
  _pad0: u32,
  _pad1: u32,
}

@group(0) @binding(1) var<uniform> p: Params;
@group(0) @binding(2) var<storage, read> table: array<f32>; // [maxPos, head_dim]: cos | sin
@group(0) @binding(3) var<storage, read_write> x: array<f32>; // [T, heads*head_dim]

const WG: u32 = 64u;

@compute @workgroup_size(WG)
fn main(
  @builtin(workgroup_id) wid: vec3<u32>,
  @builtin(num_workgroups) nwg: vec3<u32>,
  @builtin(local_invocation_index) lid: u32,
) {
  let id = group_index(wid, nwg) * WG + lid;
  let half = p.head_dim / 2u;
  if (id >= step.n_tokens * p.heads * half) {
    return;
  }
  let i = id % half;
  let th = id / half; // t * heads + h
  let t = th / p.heads;
  let row = step.tokens[t].y * p.head_dim;
  let c = table[row + i];
  let s = table[row + half + i];
  let base = th * p.head_dim;
  let x1 = x[base + i];
  let x2 = x[base + half + i];
  x[base + i] = x1 * c - x2 * s;
  x[base + half + i] = x2 * c + x1 * s;
}
