// Causal GQA attention of prefill steps, flash-style: one workgroup per (tile of BQ consecutive
// step tokens, kv head) computes the GROUP query heads of each of its tokens (BQ * GROUP <= ROWS
// rows) over the positions in tiles of BK. Each K and V vector of a tile is read from memory once
// for all the workgroup's rows (staged in workgroup memory; the one-pass kernel, attention.wgsl,
// reads it once per query head and token), scores and probabilities stay in workgroup memory,
// and each row keeps an online softmax: its running max and sum, its output rescaled as the max
// moves. A tile's tokens from several sequences (batched steps) are taken in runs of one KV slab.
//
// A dispatch covers the positions [window_start, window_end) (a multiple of BK apart): llvmpipe
// ends a shader after 65535 loop iterations, so there the op records several dispatches, each
// carrying a row's running max and sum (state) and its unnormalised output (out) to the next; the
// window holding a row's own position writes its output. Rows whose positions end before the
// window are left alone.
//
// Per K/V tile: (1) the K tile is staged; (2) each score of (row, position) is q·k over the head
// dim (four partial sums, as attention.wgsl); (3) the V tile replaces the K tile while lane r
// turns row r's scores into exp(score - new max) and rescales its sum; (4) each lane adds the
// probabilities times V to the outputs it owns (rows x head-dim chunks), rescaled first.

struct Params {
  num_heads: u32,
  num_kv_heads: u32,
  head_dim: u32,
  scale: f32,
  first_slab: u32, // the caches hold slabs [first_slab, first_slab + slabs) of positions each
  slabs: u32,
  positions: u32,
  tile: u32, // BK
  window_start: u32,
  window_end: u32,
}

@group(0) @binding(1) var<uniform> p: Params;
@group(0) @binding(2) var<storage, read> q: array<vec4<f32>>; // [T, Hq*Dh/4]
@group(0) @binding(3) var<storage, read> k_cache: array<vec4<f32>>; // [slabs, positions, Hkv*Dh/4]
@group(0) @binding(4) var<storage, read> v_cache: array<vec4<f32>>; // [slabs, positions, Hkv*Dh/4]
@group(0) @binding(5) var<storage, read_write> out: array<vec4<f32>>; // [T, Hq*Dh/4]
@group(0) @binding(6) var<storage, read_write> state: array<vec2<f32>>; // [T, Hq]: max, sum

// Query heads per kv head and tokens per tile (BQ * GROUP <= ROWS), set per pipeline.
override GROUP: u32 = 1u;
override BQ: u32 = 1u;
// Rows (token, query head) a workgroup holds.
const ROWS: u32 = 16u;
// head_dim / 4 and positions per K/V tile: set per pipeline (src/gpu/ops.ts sizes them to the
// head and to the adapter's workgroup memory).
const D4: u32 = 32u;
const BK: u32 = 32u;
// Outputs (row, chunk of 4) per lane and scores (row, position) per lane: ceil(ROWS * D4 / WG),
// ceil(ROWS * BK / WG), set per pipeline.
const ACC: u32 = 8u;
const SC: u32 = 8u;
const WG: u32 = 64u;
// Score of a masked position: exp(NO_SCORE - max) is exactly 0 once a row has a real score (its
// first tile always has position 0).
const NO_SCORE: f32 = -3.0e38;
// K/V tile rows padded by one vector, so that lanes reading one chunk of consecutive positions
// spread over the memory banks.
const KV_STRIDE: u32 = D4 + 1u;

var<workgroup> qs: array<vec4<f32>, ROWS * D4>; // the rows' q, [row][chunk]
var<workgroup> kv: array<vec4<f32>, BK * KV_STRIDE>; // K tile, then V tile, [position][chunk]
var<workgroup> ps: array<f32, ROWS * BK>; // scores, then probabilities, [row][position]
var<workgroup> row_scale: array<f32, ROWS>; // this tile's rescale of each row; at the end its sum
// The run being computed: x = its first token in the tile, y = past its last, z = its slab,
// w = its largest position + 1 (the positions its tiles cover).
var<workgroup> run: vec4<u32>;

// The run of tokens [first, ...) of the tile starting at token t0 that share token first's slab.
fn find_run(t0: u32, first: u32, count: u32) -> vec4<u32> {
  if (first >= count) {
    return vec4<u32>(count, count, 0u, 0u);
  }
  let slab = step.tokens[t0 + first].x;
  var end = first;
  var last = 0u;
  while (end < count && step.tokens[t0 + end].x == slab) {
    last = max(last, step.tokens[t0 + end].y);
    end++;
  }
  return vec4<u32>(first, end, slab, last + 1u);
}

@compute @workgroup_size(WG)
fn main(
  @builtin(workgroup_id) wid: vec3<u32>,
  @builtin(num_workgroups) nwg: vec3<u32>,
  @builtin(local_invocation_index) lane: u32,
) {
  let id = group_index(wid, nwg); // tile * Hkv + kv head
  let kvh = id % p.num_kv_heads;
  let t0 = (id / p.num_kv_heads) * BQ;
  if (t0 >= step.n_tokens) {
    return;
  }
  let count = min(BQ, step.n_tokens - t0);
  let kv_row = p.num_kv_heads * D4;
  let used_rows = BQ * GROUP;
  // Loop bounds from the params, not the constants, so that llvmpipe does not unroll these
  // loops into minutes of compiling (every workgroup-memory load there is a loop over lanes).
  let d4 = p.head_dim / 4u;
  let bk = p.tile;
  var next = 0u;
  loop {
    if (lane == 0u) {
      run = find_run(t0, next, count);
    }
    let r = workgroupUniformLoad(&run);
    if (r.x >= count) {
      break;
    }
    next = r.y;
    if (r.z < p.first_slab || r.z >= p.first_slab + p.slabs || r.w <= p.window_start) {
      continue; // another buffer's sequence, or every row of the run done in earlier windows
    }
    let resume = p.window_start > 0u;
    // The run's rows of q (others zero: they are computed and never stored).
    for (var i = lane; i < ROWS * D4; i += WG) {
      let row = i / D4;
      let tq = row / GROUP;
      var v = vec4<f32>(0.0);
      if (row < used_rows && tq >= r.x && tq < r.y) {
        v = q[((t0 + tq) * p.num_heads + kvh * GROUP + row % GROUP) * D4 + i % D4];
      }
      qs[i] = v;
    }
    var m = NO_SCORE; // lane r < ROWS: row r's running max
    var l = 0.0; // and its running sum of exp(score - m)
    if (resume && lane < used_rows) {
      let tq = lane / GROUP;
      if (tq >= r.x && tq < r.y && step.tokens[t0 + tq].y >= p.window_start) {
        let ml = state[(t0 + tq) * p.num_heads + kvh * GROUP + lane % GROUP];
        m = ml.x;
        l = ml.y;
      }
    }
    var acc: array<vec4<f32>, ACC>; // outputs lane + a * WG, as (row, chunk) = (i / D4, i % D4)
    for (var a = 0u; a < ACC; a++) {
      acc[a] = vec4<f32>(0.0);
      let i = lane + a * WG;
      let row = i / D4;
      let tq = row / GROUP;
      if (resume && i < ROWS * D4 && row < used_rows && tq >= r.x && tq < r.y) {
        if (step.tokens[t0 + tq].y >= p.window_start) {
          acc[a] = out[((t0 + tq) * p.num_heads + kvh * GROUP + row % GROUP) * D4 + i % D4];
        }
      }
    }
    let slab_base = (r.z - p.first_slab) * p.positions * kv_row + kvh * D4;
    for (var j0 = p.window_start; j0 < min(r.w, p.window_end); j0 += BK) {
      workgroupBarrier(); // qs written; the last tile's values and probabilities used
      // (1) the K tile (positions past the run's last re-read it and are masked)
      for (var i = lane; i < BK * D4; i += WG) {
        let j = min(j0 + i / D4, r.w - 1u);
        kv[(i / D4) * KV_STRIDE + i % D4] = k_cache[slab_base + j * kv_row + i % D4];
      }
      workgroupBarrier();
      // (2) scores
      for (var s = 0u; s < SC; s++) {
        let i = lane + s * WG;
        if (i < ROWS * BK) {
          let row = i / BK;
          let j = i % BK;
          let tq = row / GROUP;
          var score = NO_SCORE;
          if (row < used_rows && tq >= r.x && tq < r.y && j0 + j <= step.tokens[t0 + tq].y) {
            var dv = vec4<f32>(0.0);
            for (var c = 0u; c < d4; c++) {
              dv += qs[row * D4 + c] * kv[j * KV_STRIDE + c];
            }
            score = ((dv.x + dv.y) + (dv.z + dv.w)) * p.scale;
          }
          ps[i] = score;
        }
      }
      workgroupBarrier();
      // (3) the V tile over the K tile; each row's probabilities against its new max
      for (var i = lane; i < BK * D4; i += WG) {
        let j = min(j0 + i / D4, r.w - 1u);
        kv[(i / D4) * KV_STRIDE + i % D4] = v_cache[slab_base + j * kv_row + i % D4];
      }
      if (lane < ROWS) {
        var bm = NO_SCORE;
        for (var j = 0u; j < bk; j++) {
          bm = max(bm, ps[lane * BK + j]);
        }
        let m_new = max(m, bm);
        let scale = exp(m - m_new);
        var psum = 0.0;
        for (var j = 0u; j < bk; j++) {
          let e = exp(ps[lane * BK + j] - m_new);
          ps[lane * BK + j] = e;
          psum += e;
        }
        l = l * scale + psum;
        m = m_new;
        row_scale[lane] = scale;
      }
      workgroupBarrier();
      // (4) weighted values
      for (var a = 0u; a < ACC; a++) {
        let i = lane + a * WG;
        if (i < ROWS * D4) {
          let row = i / D4;
          let c = i % D4;
          var block = vec4<f32>(0.0);
          for (var j = 0u; j < bk; j++) {
            block += ps[row * BK + j] * kv[j * KV_STRIDE + c];
          }
          acc[a] = acc[a] * row_scale[row] + block;
        }
      }
    }
    // Rows whose position is in this window end here; later ones carry their state on.
    workgroupBarrier();
    if (lane < ROWS) {
      row_scale[lane] = l;
      let tq = lane / GROUP;
      if (lane < used_rows && tq >= r.x && tq < r.y) {
        let pos = step.tokens[t0 + tq].y;
        if (pos >= p.window_end) {
          state[(t0 + tq) * p.num_heads + kvh * GROUP + lane % GROUP] = vec2<f32>(m, l);
        }
      }
    }
    workgroupBarrier();
    for (var a = 0u; a < ACC; a++) {
      let i = lane + a * WG;
      let row = i / D4;
      let tq = row / GROUP;
      if (i < ROWS * D4 && row < used_rows && tq >= r.x && tq < r.y) {
        let pos = step.tokens[t0 + tq].y;
        let o = ((t0 + tq) * p.num_heads + kvh * GROUP + row % GROUP) * D4 + i % D4;
        if (pos >= p.window_start && pos < p.window_end) {
          out[o] = acc[a] / row_scale[row];
        } else if (pos >= p.window_end) {
          out[o] = acc[a];
        }
      }
    }
  }
}
