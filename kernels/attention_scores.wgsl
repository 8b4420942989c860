// Attention, pass 1 of 3 (with attention_softmax.wgsl, attention_values.wgsl): scores
// s[t, h, j] = q[t,h]·k[j, h/GROUP] * scale for j <= pos_t, over the KV slab of token t's sequence
// (Step.tokens; other buffers' slabs are their ops' work). LANES invocations per (t, kv head),
// lane l taking SPAN consecutive positions from l * SPAN, then LANES * SPAN further on: each K
// vector loaded serves the GROUP query heads that share it and each q vector SPAN positions
// (llvmpipe gathers every load per lane, so loads per multiply-add set the speed: GROUP + SPAN
// per GROUP * SPAN, against GROUP + 1 per GROUP with one position a lane). No barriers and
// short loops (llvmpipe ends a shader after 65535 loop iterations in total; the GROUP and SPAN
// loops have constant trip counts and are unrolled).

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
@group(0) @binding(2) var<storage, read> q: array<vec4<f32>>; // [T, Hq*Dh/4]
@group(0) @binding(3) var<storage, read> k_cache: array<vec4<f32>>; // [slabs, positions, Hkv*Dh/4]
@group(0) @binding(4) var<storage, read_write> scores: array<f32>; // [T, Hq, row_len]

// Query heads per kv head (Hq / Hkv), set per pipeline.
override GROUP: u32 = 1u;
const MAX_GROUP: u32 = 16u;
// Positions per lane and pass of its loop, set per pipeline: GROUP * SPAN <= MAX_ACC.
override SPAN: u32 = 1u;
const MAX_SPAN: u32 = 8u;
const MAX_ACC: u32 = 32u;
// Invocations per (t, kv head); matches ATTENTION_LANES in src/gpu/ops.ts.
const LANES: u32 = 64u;
const WG: u32 = 64u;

@compute @workgroup_size(WG)
fn main(
  @builtin(workgroup_id) wid: vec3<u32>,
  @builtin(num_workgroups) nwg: vec3<u32>,
  @builtin(local_invocation_index) lid: u32,
) {
  let id = group_index(wid, nwg) * WG + lid;
  let tk = id / LANES; // t * Hkv + kv head
  let lane = id % LANES;
  if (tk >= step.n_tokens * p.num_kv_heads) {
    return;
  }
  let t = tk / p.num_kv_heads;
  let kvh = tk % p.num_kv_heads;
  let token = step.tokens[t];
  if (token.x < p.first_slab || token.x >= p.first_slab + p.slabs) {
    return;
  }
  let d4 = p.head_dim / 4u;
  let kv_row = p.num_kv_heads * d4;
  let slab_base = (token.x - p.first_slab) * p.positions * kv_row;
  let th0 = t * p.num_heads + kvh * GROUP; // first query head of the group, as t * Hq + h
  let n = token.y + 1u;
  for (var j0 = lane * SPAN; j0 < n; j0 += LANES * SPAN) {
    var kb: array<u32, MAX_SPAN>; // positions past n re-read row n - 1 and are never stored
    for (var i = 0u; i < SPAN; i++) {
      kb[i] = slab_base + min(j0 + i, n - 1u) * kv_row + kvh * d4;
    }
    // acc[g * SPAN + i]: head th0 + g, position j0 + i, four partial sums (as the float64
    // reference's tolerance needs over 128 products; one scalar sum loses a bit)
    var acc: array<vec4<f32>, MAX_ACC>;
    for (var a = 0u; a < GROUP * SPAN; a++) {
      acc[a] = vec4<f32>(0.0);
    }
    for (var c = 0u; c < d4; c++) {
      var kv: array<vec4<f32>, MAX_SPAN>;
      for (var i = 0u; i < SPAN; i++) {
        kv[i] = k_cache[kb[i] + c];
      }
      for (var g = 0u; g < GROUP; g++) {
        let qv = q[(th0 + g) * d4 + c];
        for (var i = 0u; i < SPAN; i++) {
          acc[g * SPAN + i] += qv * kv[i];
        }
      }
    }
    for (var g = 0u; g < GROUP; g++) {
      for (var i = 0u; i < SPAN; i++) {
        if (j0 + i < n) {
          let d = acc[g * SPAN + i];
          scores[(th0 + g) * p.row_len + j0 + i] = ((d.x + d.y) + (d.z + d.w)) * p.scale;
        }
      }
    }
  }
}
