// Sampling, filter 1: M = max x and the top_k cut (when 0 < top_k < vocab) into sel: the k-th
// token of the order (x desc, index asc), found exactly. One workgroup of WG invocations, V = vocab:
//   - M: one strided pass (V / WG loop iterations per invocation);
//   - the k-th largest key t: a radix select over the order-preserving key, a byte at a time
//     from the top, each pass counting the tokens of the prefix found so far per next byte in a
//     workgroup histogram (4 passes; RADIX = 0, the baseline: bisection over the key's 32 bits,
//     each step counting the tokens with key >= candidate, 32 passes);
//   - ties at t: the first k - count(key > t) of them in index order (a pass over contiguous
//     chunks, a scan of the chunks' counts, a walk of one chunk).
// About 7 * V / WG + 1,600 loop iterations per invocation (5,800 at V = 151936; the baseline
// 35 * V / WG + 530: 21,320).

// Bindings 0 and 1: step (kernels/common.wgsl) and req (kernels/sample_common.wgsl).
@group(0) @binding(2) var<storage, read> x: array<f32>; // [vocab]
@group(0) @binding(3) var<storage, read_write> sel: Sel;

const WG: u32 = 256u;
// The radix select's histograms have a bucket per byte value, one per invocation.
const_assert WG == 256u;
// cut_idx of a cut that keeps every token of its key.
const ALL: u32 = 0xffffffffu;
var<workgroup> red_f: array<f32, WG>;
var<workgroup> red_u: array<u32, WG>;
var<workgroup> scan_u: array<u32, WG>;
var<workgroup> picked: u32;
// The radix select's histogram (counts per next byte of the prefix's tokens) and its choice.
var<workgroup> hist: array<atomic<u32>, 256>;
var<workgroup> chosen: vec2<u32>;

// 1: radix select (default); 0: bisection, the baseline (GpuSampler's radixSelect: false).
override RADIX: u32 = 1u;

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

// The k-th largest key (1 <= k <= V): the largest t with count(key >= t) >= k, found a byte at
// a time from the top. With the prefix p of its first bytes known and `above` = count(key's
// first bytes > p's), the next byte is the largest d with above + count(prefix p, next byte >=
// d) >= k (one exists: the invariant count(key >= p) >= k holds from p = 0 on).
fn kth_key_radix(lid: u32, V: u32, k: u32) -> u32 {
  var t = 0u;
  var above = 0u;
  for (var round = 0u; round < 4u; round++) {
    let shift = 24u - 8u * round;
    // the prefix's bits: none in the first round (a shift by 32 would be taken mod 32)
    let high = select(0u, 0xffffffffu << (shift + 8u), round > 0u);
    atomicStore(&hist[lid], 0u); // (WG = 256 invocations, one bucket each)
    workgroupBarrier();
    for (var i = lid; i < V; i += WG) {
      let key = order_key(x[i]);
      if ((key & high) == t) {
        atomicAdd(&hist[(key >> shift) & 255u], 1u);
      }
    }
    workgroupBarrier();
    if (lid == 0u) {
      var acc = above;
      var d = 255u;
      loop {
        let n = atomicLoad(&hist[d]);
        if (acc + n >= k || d == 0u) {
          chosen = vec2<u32>(d, acc);
          break;
        }
        acc += n;
        d--;
      }
    }
    let c = workgroupUniformLoad(&chosen);
    t = t | (c.x << shift);
    above = c.y;
  }
  return t;
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
    var t = 0u;
    if (RADIX == 1u) {
      t = kth_key_radix(lid, V, k);
    } else {
      // The largest t with count(key >= t) >= k, built from the top bit down.
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
