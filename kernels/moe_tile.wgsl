// Prelude of the tiled expert kernels (experts_*_tiled.wgsl, experts_*_tiled_wg.wgsl): tile `tile`
// of the step's pairs as moe_tiles.wgsl cut them (its layout there): x = its expert, y = the first
// entry of its pairs in the ordered pair list, z = its pair count; all 0 past the step's tiles.
// Reads the kernel's p (num_experts, k) and tiles.

fn tile_entry(tile: u32) -> vec3<u32> {
  let order = p.num_experts; // the ordered pair list
  let n_tiles_at = order + step.n_tokens * p.k;
  if (tile >= tiles[n_tiles_at]) {
    return vec3<u32>(0u);
  }
  let at = n_tiles_at + 1u + 3u * tile;
  return vec3<u32>(tiles[at], order + tiles[at + 1u], tiles[at + 2u]);
}
