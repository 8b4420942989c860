// Groups this step's (token, expert) pairs by expert for the tiled expert kernels: one invocation
// counts the pairs per expert, lists them in expert order, and cuts each expert's list into
// tiles of at most p.tile pairs. Serial, but only O(T*K + E) steps.
// Scratch (u32): [0, E) cursors | [E, E + T*K) pairs in expert order | n_tiles | tiles (3 u32 each:
// expert, first entry in the ordered list, pair count).

struct Params {
  k: u32,
  num_experts: u32,
  tile: u32, // pairs per tile: TILE of the tiled expert pipelines that read these tiles
  _pad: u32,
}

@group(0) @binding(1) var<uniform> p: Params;
@group(0) @binding(2) var<storage, read> idx: array<u32>; // [T, K]
@group(0) @binding(3) var<storage, read_write> tiles: array<u32>; // scratch, layout above


@compute @workgroup_size(1)
fn main() {
  let E = p.num_experts;
  let pairs = step.n_tokens * p.k;
  let order = E; // offset of the ordered pair list
  let n_tiles_at = E + pairs;
  for (var e = 0u; e < E; e++) {
    tiles[e] = 0u;
  }
  for (var i = 0u; i < pairs; i++) {
    tiles[idx[i]] += 1u;
  }
  // Counts -> start of each expert's list; tiles cut while scanning.
  var start = 0u;
  var n_tiles = 0u;
  for (var e = 0u; e < E; e++) {
    let count = tiles[e];
    tiles[e] = start;
    for (var s = 0u; s < count; s += p.tile) {
      let at = n_tiles_at + 1u + 3u * n_tiles;
      tiles[at] = e;
      tiles[at + 1u] = start + s;
      tiles[at + 2u] = min(p.tile, count - s);
      n_tiles += 1u;
    }
    start += count;
  }
  tiles[n_tiles_at] = n_tiles;
  // Pairs in expert order (ascending pair index within an expert).
  for (var i = 0u; i < pairs; i++) {
    let e = idx[i];
    tiles[order + tiles[e]] = i;
    tiles[e] += 1u;
  }
}
