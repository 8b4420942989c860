// Greedy sampling: the token is the index of the largest x[0..vocab) (lowest index on ties),
// written to ids[kv_len]; state.end is updated (see finish). One workgroup; each invocation scans
// a stride of the row (vocab / WG loop iterations), then a tree keeps (value, index) pairs.

// Bindings 0 and 1: step (kernels/common.wgsl) and req (kernels/sample_common.wgsl).
@group(0) @binding(2) var<storage, read> x: array<f32>; // [vocab]
@group(0) @binding(3) var<storage, read_write> ids: array<u32>; // [capacity]
@group(0) @binding(4) var<storage, read_write> state: array<u32>; // [4]: end, unused

const WG: u32 = 256u;
var<workgroup> best_v: array<f32, WG>;
var<workgroup> best_i: array<u32, WG>;

// The token goes to ids[kv_len]; state[0] = its length once it ends the sequence (see
// ends_sequence). Ids below kv_len are never written.
fn finish(token: u32) {
  let len = step.kv_len;
  if (len < req.capacity) {
    ids[len] = token;
  }
  if (state[0] == NONE && ends_sequence(token, len)) {
    state[0] = len + 1u;
  }
}

@compute @workgroup_size(WG)
fn main(@builtin(local_invocation_index) lid: u32) {
  var bv = 0.0;
  var bi = NONE;
  for (var i = lid; i < req.vocab; i += WG) {
    let v = x[i];
    if (bi == NONE || v > bv) {
      bv = v;
      bi = i;
    }
  }
  best_v[lid] = bv;
  best_i[lid] = bi;
  for (var s = WG / 2u; s > 0u; s >>= 1u) {
    workgroupBarrier();
    if (lid < s) {
      let ov = best_v[lid + s];
      let oi = best_i[lid + s];
      let mi = best_i[lid];
      if (oi != NONE && (mi == NONE || ov > best_v[lid] || (ov == best_v[lid] && oi < mi))) {
        best_v[lid] = ov;
        best_i[lid] = oi;
      }
    }
  }
  if (lid == 0u) {
    finish(best_i[0]);
  }
}
