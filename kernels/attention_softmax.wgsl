// Attention, pass 2 of 3: s[t, h, j] = exp(s - max_j s) in place for j <= pos_t, and their sum
// in the row's last entry (pass 3 divides by it). One invocation per (t, h).

struct Params {
  num_heads: u32,
  num_kv_heads: u32,
  head_dim: u32,
  scale: f32,
  row_len: u32, // positions + 1: the last entry of a row holds the softmax sum
  first_slab: u32, // the caches hold slabs [first_slab, first_slab + slabs) of positions each
  slabs: u32,
  positions: u32,
}

@group(0) @binding(1) var<uniform> p: Params;
@group(0) @binding(2) var<storage, read_write> scores: array<f32>; // [T, Hq, row_len]

const WG: u32 = 8u;

@compute @workgroup_size(WG)
fn main(
  @builtin(workgroup_id) wid: vec3<u32>,
  @builtin(num_workgroups) nwg: vec3<u32>,
  @builtin(local_invocation_index) lid: u32,
) {
  let th = group_index(wid, nwg) * WG + lid; // t * Hq + h
  if (th >= step.n_tokens * p.num_heads) {
    return;
  }
  let token = step.tokens[th / p.num_heads];
  if (token.x < p.first_slab || token.x >= p.first_slab + p.slabs) {
    return;
  }
  let n = token.y + 1u;
  let base = th * p.row_len;
  var m = scores[base];
  for (var j = 1u; j < n; j++) {
    m = max(m, scores[base + j]);
  }
  var sum = 0.0;
  for (var j = 0u; j < n; j++) {
    let e = exp(scores[base + j] - m);
    scores[base + j] = e;
    sum += e;
  }
  scores[base + p.row_len - 1u] = sum;
}
