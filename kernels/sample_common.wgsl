// Prelude of the sampler kernels (kernels/sample_*.wgsl): src/gpu/sampler.ts composes it after
// kernels/common.wgsl and before the kernel (KernelSpec.prelude). It holds the request, the kept
// set, the token order and the exact arithmetic that the kernels share; a kernel uses what it needs
// (declarations it does not use cost nothing). Every kernel that includes it declares WG, its
// workgroup size, which chunk_range() and scan64() divide the work by.

// The request (src/gpu/sampler.ts requestBytes() writes it).
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

// Value of state.end while the sequence runs.
const NONE: u32 = 0xffffffffu;

// Whether the sequence ends once `token` is at position len: at an EOS id, or when position
// max_end - 1 holds a token.
fn ends_sequence(token: u32, len: u32) -> bool {
  var stop = len + 1u >= req.max_end;
  for (var j = 0u; j < req.n_eos; j++) {
    stop = stop || token == req.eos[j / 4u][j % 4u];
  }
  return stop;
}

// The kept set so far: M = max x and the end of the kept prefix of the order (x desc, index asc):
// tokens with key > cut_key, or key == cut_key and index <= cut_idx.
struct Sel {
  m: f32,
  cut_key: u32,
  cut_idx: u32,
  _pad: u32,
}

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

// The contiguous range of indices invocation lid walks in index-order passes.
fn chunk_range(lid: u32) -> vec2<u32> {
  let chunk = (req.vocab + WG - 1u) / WG;
  let lo = min(lid * chunk, req.vocab);
  return vec2<u32>(lo, min(lo + chunk, req.vocab));
}

// ---- exact arithmetic: the integer operations of src/sampling.ts expWeight() and mulFrac24(),
// so the same bits (tests/sampler_gpu_test.ts runs them against the CPU's). ----

// Unsigned 64-bit integers are vec2<u32>(low word, high word).
fn add64(a: vec2<u32>, b: vec2<u32>) -> vec2<u32> {
  let lo = a.x + b.x;
  return vec2<u32>(lo, a.y + b.y + select(0u, 1u, lo < a.x));
}

fn less64(a: vec2<u32>, b: vec2<u32>) -> bool {
  return a.y < b.y || (a.y == b.y && a.x < b.x);
}

// High word of the 64-bit product a * b, from 16-bit halves.
fn mulhi(a: u32, b: u32) -> u32 {
  let a_lo = a & 0xffffu;
  let a_hi = a >> 16u;
  let b_lo = b & 0xffffu;
  let b_hi = b >> 16u;
  let lo_hi = a_lo * b_hi;
  let hi_lo = a_hi * b_lo;
  let mid = ((a_lo * b_lo) >> 16u) + (lo_hi & 0xffffu) + (hi_lo & 0xffffu);
  return a_hi * b_hi + (lo_hi >> 16u) + (hi_lo >> 16u) + (mid >> 16u);
}

// floor (or ceil when `up`) of a * b / 2^24, exactly, for a <= 2^24 and b < 2^56.
fn mul_frac24(a: u32, b: vec2<u32>, up: bool) -> vec2<u32> {
  let b_high = (b.x >> 24u) | (b.y << 8u);
  let b_low = b.x & 0xffffffu;
  let low = vec2<u32>(a * b_low, mulhi(a, b_low)); // below 2^48
  var frac = (low.x >> 24u) | (low.y << 8u);
  if (up && (low.x & 0xffffffu) != 0u) {
    frac += 1u;
  }
  return add64(vec2<u32>(a * b_high, mulhi(a, b_high)), vec2<u32>(frac, 0u));
}

// expWeight's constants (tests/sampling_test.ts checks them against src/sampling.ts's).
// Below this d the weight is 0 (exp(-22) * 2^31 = 0.6).
const EXP_WEIGHT_MIN_D: f32 = -22.0;
// -d in units of 2^-26 (below 2^31).
const D_SCALE: f32 = 67108864.0;
// round(log2(e) * 2^30) and round(ln(2) * 2^32).
const LOG2E_Q30: u32 = 1549082005u;
const LN2_Q32: u32 = 2977044472u;
// round(2^(31 - j/64)), j = 0..63.
const EXP2_TABLE = array<u32, 64>(
  2147483648u, 2124350982u, 2101467502u, 2078830522u, 2056437387u, 2034285470u,
  2012372174u, 1990694927u, 1969251188u, 1948038440u, 1927054196u, 1906295993u,
  1885761398u, 1865448001u, 1845353420u, 1825475297u, 1805811301u, 1786359126u,
  1767116489u, 1748081133u, 1729250827u, 1710623359u, 1692196547u, 1673968228u,
  1655936265u, 1638098541u, 1620452965u, 1602997467u, 1585730000u, 1568648537u,
  1551751076u, 1535035634u, 1518500250u, 1502142985u, 1485961921u, 1469955159u,
  1454120821u, 1438457051u, 1422962010u, 1407633882u, 1392470869u, 1377471191u,
  1362633090u, 1347954824u, 1333434672u, 1319070932u, 1304861917u, 1290805962u,
  1276901417u, 1263146652u, 1249540052u, 1236080024u, 1222764986u, 1209593378u,
  1196563654u, 1183674286u, 1170923762u, 1158310587u, 1145833280u, 1133490379u,
  1121280436u, 1109202018u, 1097253708u, 1085434106u,
);

// floor(exp(d) * 2^31) for d <= 0, give or take 64: D = floor(-d * 2^26); y = D * log2(e)
// = k + f (56 fraction bits); 2^-f = 2^(-j/64) (table) * exp(-h) with h = g * ln(2) < 0.011 and
// exp(-h) = 1 - (h - h^2/2 + h^3/6) (32-bit fixed point); the weight is (2^31 * 2^-f) >> k.
fn exp_weight(d: f32) -> u32 {
  if (!(d > EXP_WEIGHT_MIN_D)) {
    return 0u;
  }
  let big_d = u32(-d * D_SCALE); // exact scaling, then truncation
  let hi = mulhi(big_d, LOG2E_Q30);
  let lo = big_d * LOG2E_Q30;
  let k = hi >> 24u;
  let frac = ((hi & 0xffffffu) << 8u) | (lo >> 24u);
  let h = mulhi(frac & 0x3ffffffu, LN2_Q32);
  let h2 = mulhi(h, h);
  let p = h - (h2 >> 1u) + mulhi(h2, h) / 6u;
  let t = EXP2_TABLE[frac >> 26u];
  let m = t - mulhi(t, p);
  return select(0u, m >> min(k, 31u), k < 32u);
}

// ---- end of exact arithmetic ----

// Inclusive prefix sums, from `base`, of v over the invocations in lid order (invocation 0 walks
// them: WG iterations); returns (sum before this invocation's, sum up to it). The total stays in
// scan_64[WG - 1] until the next call.
var<workgroup> scan_64: array<vec2<u32>, WG>;

fn scan64(lid: u32, base: vec2<u32>, v: vec2<u32>) -> array<vec2<u32>, 2> {
  workgroupBarrier(); // earlier readers of scan_64 are done
  scan_64[lid] = v;
  workgroupBarrier();
  if (lid == 0u) {
    var acc = base;
    for (var j = 0u; j < WG; j++) {
      acc = add64(acc, scan_64[j]);
      scan_64[j] = acc;
    }
  }
  workgroupBarrier();
  let before = select(base, scan_64[max(lid, 1u) - 1u], lid > 0u);
  return array<vec2<u32>, 2>(before, scan_64[lid]);
}
