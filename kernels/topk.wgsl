// MoE router: p = softmax(logits[t, :E]) in f32, then the K largest p in descending order (ties:
// lower index first), optionally renormalised to sum 1. One invocation per token.

struct Params {
  num_experts: u32,
  k: u32,
  norm_topk: u32,
  _pad: u32,
}

@group(0) @binding(1) var<uniform> p: Params;
@group(0) @binding(2) var<storage, read> logits: array<f32>; // [T, E]
@group(0) @binding(3) var<storage, read_write> idx: array<u32>; // [T, K]
@group(0) @binding(4) var<storage, read_write> weights: array<f32>; // [T, K]

// MAX_EXPERTS (src/gpu/kernel_interface.ts): the largest E; src/gpu/ops.ts checks it.
const WG: u32 = 8u;

@compute @workgroup_size(WG)
fn main(
  @builtin(workgroup_id) wid: vec3<u32>,
  @builtin(num_workgroups) nwg: vec3<u32>,
  @builtin(local_invocation_index) lid: u32,
) {
  let t = group_index(wid, nwg) * WG + lid;
  if (t >= step.n_tokens) {
    return;
  }
  let E = p.num_experts;
  let base = t * E;
  var mx = logits[base];
  for (var e = 1u; e < E; e++) {
    mx = max(mx, logits[base + e]);
  }
  var prob: array<f32, MAX_EXPERTS>;
  var sum = 0.0;
  for (var e = 0u; e < E; e++) {
    let v = exp(logits[base + e] - mx);
    prob[e] = v;
    sum += v;
  }
  for (var e = 0u; e < E; e++) {
    prob[e] = prob[e] / sum;
  }
  // Selection in the strict order (p descending, index ascending): pick j is the best entry that
  // comes after pick j-1 in that order, so no "taken" mask is needed.
  var prev_v = 3.0e38;
  var prev_i = 0u;
  var total = 0.0;
  let out_base = t * p.k;
  for (var j = 0u; j < p.k; j++) {
    var best_v = -1.0;
    var best_i = 0u;
    for (var e = 0u; e < E; e++) {
      let v = prob[e];
      let after = j == 0u || v < prev_v || (v == prev_v && e > prev_i);
      if (after && v > best_v) {
        best_v = v;
        best_i = e;
      }
    }
    idx[out_base + j] = best_i;
    weights[out_base + j] = best_v;
    total += best_v;
    prev_v = best_v;
    prev_i = best_i;
  }
  if (p.norm_topk != 0u) {
    for (var j = 0u; j < p.k; j++) {
      weights[out_base + j] = weights[out_base + j] / total;
    }
  }
}
