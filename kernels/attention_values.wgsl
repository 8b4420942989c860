// Attention, pass 3 of 3: out[t, h*Dh + 4c..4c+4] = sum_j e[t, h, j] * v[j, h/GROUP, 4c..4c+4]
// / sum_j e[t, h, j] (e and its sum from pass 2). One invocation per (t, kv head, CHUNKS
// consecutive c < Dh/4): each V chunk is read once for the GROUP query heads that share it, each
// e value once for CHUNKS chunks (llvmpipe gathers every load per lane: GROUP + 4 * CHUNKS
// loaded values per 4 * GROUP * CHUNKS multiply-adds).

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
@group(0) @binding(2) var<storage, read> probs: array<f32>; // [T, Hq, row_len]: exp(s - max), sum
@group(0) @binding(3) var<storage, read> v_cache: array<vec4<f32>>; // [slabs, positions, Hkv*Dh/4]
@group(0) @binding(4) var<storage, read_write> out: array<vec4<f32>>; // [T, Hq*Dh/4]

// Query heads per kv head (Hq / Hkv), set per pipeline.
override GROUP: u32 = 1u;
const MAX_GROUP: u32 = 16u;
// Head-dim chunks of 4 values per invocation, set per pipeline: GROUP * CHUNKS <= MAX_ACC, and
// CHUNKS divides Dh/4.
override CHUNKS: u32 = 1u;
const MAX_CHUNKS: u32 = 4u;
const MAX_ACC: u32 = 32u;
const WG: u32 = 32u;

@compute @workgroup_size(WG)
fn main(
  @builtin(workgroup_id) wid: vec3<u32>,
  @builtin(num_workgroups) nwg: vec3<u32>,
  @builtin(local_invocation_index) lid: u32,
) {
  let id = group_index(wid, nwg) * WG + lid; // (t * Hkv + kv head) * lanes + lane
  let d4 = p.head_dim / 4u;
  let lanes = d4 / CHUNKS;
  let tk = id / lanes;
  let c0 = (id % lanes) * CHUNKS;
  if (tk >= step.n_tokens * p.num_kv_heads) {
    return;
  }
  let t = tk / p.num_kv_heads;
  let kvh = tk % p.num_kv_heads;
  let token = step.tokens[t];
  if (token.x < p.first_slab || token.x >= p.first_slab + p.slabs) {
    return;
  }
  let n = token.y + 1u;
  let kv_row = p.num_kv_heads * d4;
  let col = (token.x - p.first_slab) * p.positions * kv_row + kvh * d4 + c0;
  let th0 = t * p.num_heads + kvh * GROUP; // first query head of the group, as t * Hq + h
  var acc: array<vec4<f32>, MAX_ACC>; // acc[g * CHUNKS + k]: head th0 + g, chunk c0 + k
  for (var a = 0u; a < GROUP * CHUNKS; a++) {
    acc[a] = vec4<f32>(0.0);
  }
  for (var j = 0u; j < n; j++) {
    var vv: array<vec4<f32>, MAX_CHUNKS>;
    for (var k = 0u; k < CHUNKS; k++) {
      vv[k] = v_cache[j * kv_row + col + k];
    }
    for (var g = 0u; g < GROUP; g++) {
      let e = probs[(th0 + g) * p.row_len + j];
      for (var k = 0u; k < CHUNKS; k++) {
        acc[g * CHUNKS + k] += e * vv[k];
      }
    }
  }
  for (var g = 0u; g < GROUP; g++) {
    let th = th0 + g;
    let sum = probs[th * p.row_len + p.row_len - 1u];
    for (var k = 0u; k < CHUNKS; k++) {
      out[th * d4 + c0 + k] = acc[g * CHUNKS + k] / sum;
    }
  }
}
