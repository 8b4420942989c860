// Sampling, filter 1: M = max x and the top_k cut (when 0 < top_k < vocab) into sel: the k-th
// token of the order (x desc, index asc), found exactly. One workgroup of WG invocations, V = vocab:
//   - M: one strided pass (V / WG loop iterations per invocation);
//   - the k-th largest key t: bisection over the 32 bits of the order-preserving key, each step
//     counting the tokens with key >= candidate (32 passes);
//   - ties at t: the first k - count(key > t) of them in index order (a pass over contiguous
//     chunks, a scan of the chunks' counts, a walk of one chunk).
// About 35 * V / WG + 530 loop iterations per invocation (21,320 at V = 151936).

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
@group(0) @binding(3) var<storage, read_write> sel: Sel;

// The kept set so far: M = max x and the end of the kept prefix of the order (x desc, index asc):
// tokens with key > cut_key, or key == cut_key and index <= cut_idx.
struct Sel {
  m: f32,
  cut_key: u32,
  cut_idx: u32,
  _pad: u32,
}

const WG: u32 = 256u;
// cut_idx of a cut that keeps every token of its key.
const ALL: u32 = 0xffffffffu;
var<workgroup> red_f: array<f32, WG>;
var<workgroup> red_u: array<u32, WG>;
var<workgroup> scan_u: array<u32, WG>;
var<workgroup> picked: u32;

// A u32 whose order is the order of the f32 values (-0 maps to +0's key: equal values tie).
fn order_key(v: f32) -> u32 {
  var u = bitcast<u32>(v);
  if (u == 0x80000000u) {
    u = 0u;
  }
  return select(u | 0x80000000u, ~u, (u & 0x80000000u) != 0u);
}

// Whether token i (key k) is in the kept prefix of the order (x desc, index asc) that ends at
// (cut_key, cut_idx).
fn in_cut(k: u32, i: u32, cut_key: u32, cut_idx: u32) -> bool {
  return k > cut_key || (k == cut_key && i <= cut_idx);
}

// Max of v over the workgroup, the same value in every invocation (a fixed tree).
fn max_f32(lid: u32, v: f32) -> f32 {
  workgroupBarrier(); // earlier readers of red_f are done
  red_f[lid] = v;
  for (var s = WG / 2u; s > 0u; s >>= 1u) {
    workgroupBarrier();
    if (lid < s) {
      red_f[lid] = max(red_f[lid], red_f[lid + s]);
    }
  }
  return workgroupUniformLoad(&red_f[0]);
}

// Sum of v over the workgroup, the same value in every invocation (a fixed tree).
fn sum_u32(lid: u32, v: u32) -> u32 {
  workgroupBarrier(); // earlier readers of red_u are done
  red_u[lid] = v;
  for (var s = WG / 2u; s > 0u; s >>= 1u) {
    workgroupBarrier();
    if (lid < s) {
      red_u[lid] = red_u[lid] + red_u[lid + s];
    }
  }
  return workgroupUniformLoad(&red_u[0]);
}

// Exclusive prefix sum of v over the invocations, in lid order (invocation 0 walks them: WG
// iterations).
fn exclusive_scan_u32(lid: u32, v: u32) -> u32 {
  workgroupBarrier(); // earlier readers of scan_u are done
  scan_u[lid] = v;
  workgroupBarrier();
  if (lid == 0u) {
    var acc = 0u;
    for (var j = 0u; j < WG; j++) {
      let c = scan_u[j];
      scan_u[j] = acc;
      acc += c;
    }
  }
  workgroupBarrier();
  return scan_u[lid];
}

// The contiguous range of indices invocation lid walks in index-order passes.
fn chunk_range(lid: u32) -> vec2<u32> {
  let chunk = (req.vocab + WG - 1u) / WG;
  let lo = min(lid * chunk, req.vocab);
  return vec2<u32>(lo, min(lo + chunk, req.vocab));
}

// The index of the token that ends the first `need` tokens of the order, given that their last
// key is t: the (need - count(key > t))-th token with key t in index order.
fn tie_cut(lid: u32, t: u32, need: u32) -> u32 {
  let r = chunk_range(lid);
  var above = 0u;
  var ties = 0u;
  for (var i = r.x; i < r.y; i++) {
    let k = order_key(x[i]);
    above += select(0u, 1u, k > t);
    ties += select(0u, 1u, k == t);
  }
  let rank = need - sum_u32(lid, above);
  let before = exclusive_scan_u32(lid, ties);
  if (before < rank && rank <= before + ties) {
    var n = before;
    for (var i = r.x; i < r.y; i++) {
      if (order_key(x[i]) == t) {
        n++;
        if (n == rank) {
          picked = i;
          break;
        }
      }
    }
  }
  return workgroupUniformLoad(&picked);
}

@compute @workgroup_size(WG)
fn main(@builtin(local_invocation_index) lid: u32) {
  let V = req.vocab;
  var mx = x[0];
  for (var i = lid; i < V; i += WG) {
    mx = max(mx, x[i]);
  }
  let m = max_f32(lid, mx);
  var cut_key = 0u;
  var cut_idx = ALL;
  let k = req.top_k;
  if (k > 0u && k < V) {
    // The largest t with count(key >= t) >= k, built from the top bit down.
    var t = 0u;
    for (var b = 0u; b < 32u; b++) {
      let cand = t | (0x80000000u >> b);
      var n = 0u;
      for (var i = lid; i < V; i += WG) {
        n += select(0u, 1u, order_key(x[i]) >= cand);
      }
      if (sum_u32(lid, n) >= k) {
        t = cand;
      }
    }
    cut_key = t;
    cut_idx = tie_cut(lid, t, k);
  }
  if (lid == 0u) {
    sel.m = m;
    sel.cut_key = cut_key;
    sel.cut_idx = cut_idx;
  }
}
