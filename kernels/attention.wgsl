// Causal GQA attention: one workgroup per (token, query head), positions in blocks of WG, over
// the KV slab of the token's sequence up to the token's position (Step.tokens).
// Per block: (1) lane i scores position j0 + i (q·k over the head dim); (2) every lane takes the
// block max, and lane i turns its score into exp(score - running max); (3) lane c, owning
// head-dim chunk c (4 values), adds the block's weighted values to its running output, rescaled
// as the max moves (online softmax). Every loop a lane runs is short (head_dim/4 or WG per block):
// llvmpipe ends a shader after 65535 loop iterations in total, which a per-head loop over
// positions and head dims reaches at ~1000 positions. src/gpu/ops.ts checks the cache length.

struct Params {
  num_heads: u32,
  num_kv_heads: u32,
  head_dim: u32,
  scale: f32,
  first_slab: u32, // the caches hold slabs [first_slab, first_slab + slabs) of positions each
  slabs: u32,
  positions: u32,
  _pad: u32,
}

@group(0) @binding(1) var<uniform> p: Params;
@group(0) @binding(2) var<storage, read> q: array<vec4<f32>>; // [T, Hq*Dh/4]
@group(0) @binding(3) var<storage, read> k_cache: array<vec4<f32>>; // [slabs, positions, Hkv*Dh/4]
@group(0) @binding(4) var<storage, read> v_cache: array<vec4<f32>>; // [slabs, positions, Hkv*Dh/4]
@group(0) @binding(5) var<storage, read_write> out: array<vec4<f32>>; // [T, Hq*Dh/4]

// Positions per block and lanes per workgroup; also the largest head_dim / 4 (head_dim 256).
const WG: u32 = 64u;
// Score of a position past the causal limit: exp(NO_SCORE - max) is exactly 0.
const NO_SCORE: f32 = -3.0e38;
var<workgroup> scores: array<f32, WG>;
var<workgroup> probs: array<f32, WG>;

@compute @workgroup_size(WG)
fn main(
  @builtin(workgroup_id) wid: vec3<u32>,
  @builtin(num_workgroups) nwg: vec3<u32>,
  @builtin(local_invocation_index) lane: u32,
) {
  let id = group_index(wid, nwg); // t * Hq + h
  if (id >= step.n_tokens * p.num_heads) {
    return;
  }
  let t = id / p.num_heads;
  let h = id % p.num_heads;
  let tk = step.tokens[t];
  if (tk.x < p.first_slab || tk.x >= p.first_slab + p.slabs) {
    return; // another buffer's sequence
  }
  let slab_row = (tk.x - p.first_slab) * p.positions; // first cache row of the sequence
  let d4 = p.head_dim / 4u;
  let kvh = h / (p.num_heads / p.num_kv_heads);
  let kv_row = p.num_kv_heads * d4;
  let kv_col = slab_row * kv_row + kvh * d4;
  let q_base = id * d4;
  let n = tk.y + 1u; // positions 0..pos
  var m = NO_SCORE; // running max of the scores
  var l = 0.0; // running sum of exp(score - m)
  var acc = vec4<f32>(0.0); // running sum of exp(score - m) * v[j, chunk lane]
  for (var j0 = 0u; j0 < n; j0 += WG) {
    let count = min(WG, n - j0);
    // (1) scores
    var s = NO_SCORE;
    if (lane < count) {
      let kb = (j0 + lane) * kv_row + kv_col;
      var dv = vec4<f32>(0.0);
      for (var c = 0u; c < d4; c++) {
        dv += q[q_base + c] * k_cache[kb + c];
      }
      s = ((dv.x + dv.y) + (dv.z + dv.w)) * p.scale;
    }
    scores[lane] = s;
    workgroupBarrier();
    // (2) block max, probabilities relative to the new running max
    var bm = NO_SCORE;
    for (var i = 0u; i < count; i++) {
      bm = max(bm, scores[i]);
    }
    let m_new = max(m, bm);
    let corr = exp(m - m_new);
    probs[lane] = exp(s - m_new);
    m = m_new;
    workgroupBarrier();
    // (3) weighted values
    if (lane < d4) {
      var block = vec4<f32>(0.0);
      var psum = 0.0;
      for (var i = 0u; i < count; i++) {
        let pi = probs[i];
        block += pi * v_cache[(j0 + i) * kv_row + kv_col + lane];
        psum += pi;
      }
      acc = acc * corr + block;
      l = l * corr + psum;
    }
  }
  if (lane < d4) {
    out[q_base + lane] = acc / l;
  }
}
