// Greedy sampling: the token is the index of the largest x[0..vocab) (lowest index on ties),
// written to ids[kv_len]; state.end is updated (see finish). One workgroup; each invocation scans
// a stride of the row (vocab / WG loop iterations), then a tree keeps (value, index) pairs.

// The request (src/gpu/sampler.ts writes it; every kernels/sample_*.wgsl declares the same struct).
struct Request {
  vocab: u32,
  capacity: u32,
  gen_start: u32,
  max_end: u32,
  top_k: u32,
  // ceil(top_p * 2^24)
  top_p24: u32,
  seed_lo: u32,
  seed_hi: u32,
  n_eos: u32,
  // ceil(min_p * 2^31): the least weight min_p keeps
  min_q: u32,
  inv_t: f32,
  rep: f32,
  inv_rep: f32,
  presence: f32,
  frequency: f32,
  // 0.0, added to the penalties' products that a subtraction follows: a compiler may contract
  // a * b - c into one fma (one rounding instead of two); with (a * b + zero) - c it can only fuse
  // the harmless add.
  zero: f32,
  eos: array<vec4<u32>, 2>,
}

@group(0) @binding(1) var<uniform> req: Request;
@group(0) @binding(2) var<storage, read> x: array<f32>; // [vocab]
@group(0) @binding(3) var<storage, read_write> ids: array<u32>; // [capacity]
@group(0) @binding(4) var<storage, read_write> state: array<u32>; // [4]: end, unused

const WG: u32 = 256u;
var<workgroup> best_v: array<f32, WG>;
var<workgroup> best_i: array<u32, WG>;

// Value of state.end while the sequence runs.
const NONE: u32 = 0xffffffffu;

// The token goes to ids[kv_len]; the sequence ends (state[0] = its length, once) at an EOS id or
// when position max_end - 1 holds a token. Ids below kv_len are never written.
fn finish(token: u32) {
  let len = step.kv_len;
  if (len < req.capacity) {
    ids[len] = token;
  }
  if (state[0] == NONE) {
    var stop = len + 1u >= req.max_end;
    for (var j = 0u; j < req.n_eos; j++) {
      stop = stop || token == req.eos[j / 4u][j % 4u];
    }
    if (stop) {
      state[0] = len + 1u;
    }
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
