// Sampling, filter 1: M = max x and the top_k cut (when 0 < top_k < vocab) into sel: the k-th
// token of the order (x desc, index asc), found exactly. One workgroup of WG invocations, V = vocab:
//   - M: one strided pass (V / WG loop iterations per invocation);
//   - the k-th largest key t: bisection over the 32 bits of the order-preserving key, each step
//     counting the tokens with key >= candidate (32 passes);
//   - ties at t: the first k - count(key > t) of them in index order (a pass over contiguous
//     chunks, a scan of the chunks' counts, a walk of one chunk).
// About 35 * V / WG + 530 loop iterations per invocation (21,320 at V = 151936).

// Bindings 0 and 1: step (kernels/common.wgsl) and req (kernels/sample_common.wgsl).
@group(0) @binding(2) var<storage, read> x: array<f32>; // [vocab]
@group(0) @binding(3) var<storage, read_write> sel: Sel;

const WG: u32 = 256u;
// cut_idx of a cut that keeps every token of its key.
const ALL: u32 = 0xffffffffu;
var<workgroup> red_f: array<f32, WG>;
var<workgroup> red_u: array<u32, WG>;
var<workgroup> scan_u: array<u32, WG>;
var<workgroup> picked: u32;

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
