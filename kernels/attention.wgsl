// Causal GQA attention with an online softmax: one invocation per (token, query head), looping
// over every cached position j <= pos0 + t, so any kv_len up to the cache size works.

struct Params {
  num_heads: u32,
  num_kv_heads: u32,
  head_dim: u32,
  scale: f32,
}

@group(0) @binding(1) var<uniform> p: Params;
@group(0) @binding(2) var<storage, read> q: array<vec4<f32>>; // [T, Hq*Dh/4]
@group(0) @binding(3) var<storage, read> k_cache: array<vec4<f32>>; // [maxCtx, Hkv*Dh/4]
@group(0) @binding(4) var<storage, read> v_cache: array<vec4<f32>>; // [maxCtx, Hkv*Dh/4]
@group(0) @binding(5) var<storage, read_write> out: array<vec4<f32>>; // [T, Hq*Dh/4]

// Largest head_dim / 4 supported (head_dim 256); src/gpu/ops.ts checks it.
const MAX_D4: u32 = 64u;
// Few invocations per workgroup: decode has only Hq of them, and llvmpipe spreads workgroups
// (not invocations) over its CPU threads.
const WG: u32 = 8u;

@compute @workgroup_size(WG)
fn main(
  @builtin(workgroup_id) wid: vec3<u32>,
  @builtin(num_workgroups) nwg: vec3<u32>,
  @builtin(local_invocation_index) lid: u32,
) {
  let id = group_index(wid, nwg) * WG + lid; // t * Hq + h
  if (id >= step.n_tokens * p.num_heads) {
    return;
  }
  let t = id / p.num_heads;
  let h = id % p.num_heads;
  let d4 = p.head_dim / 4u;
  let kvh = h / (p.num_heads / p.num_kv_heads);
  let kv_row = p.num_kv_heads * d4;
  let q_base = id * d4;
  var qv: array<vec4<f32>, MAX_D4>;
  var acc: array<vec4<f32>, MAX_D4>;
  for (var c = 0u; c < d4; c++) {
    qv[c] = q[q_base + c];
    acc[c] = vec4<f32>(0.0);
  }
  var m = -3.0e38; // running max of the scores (finite, so the first correction is exp(-inf) = 0)
  var l = 0.0; // running sum of exp(score - m)
  let last = step.pos0 + t;
  for (var j = 0u; j <= last; j++) {
    let kb = j * kv_row + kvh * d4;
    var dv = vec4<f32>(0.0);
    for (var c = 0u; c < d4; c++) {
      dv += qv[c] * k_cache[kb + c];
    }
    let s = ((dv.x + dv.y) + (dv.z + dv.w)) * p.scale;
    let m_new = max(m, s);
    let corr = exp(m - m_new);
    let pj = exp(s - m_new);
    l = l * corr + pj;
    for (var c = 0u; c < d4; c++) {
      acc[c] = acc[c] * corr + pj * v_cache[kb + c];
    }
    m = m_new;
  }
  let inv = 1.0 / l;
  for (var c = 0u; c < d4; c++) {
    out[q_base + c] = acc[c] * inv;
  }
}
