// load_block8 for f32 weights in rows8 (composed after weights_f32.wgsl by src/gpu/shader.ts when
// the kernel calls it, in place of the generic weights_block8.wgsl): the 8 rows of a rows8 chunk,
// row r's 8 elements at e + 8 r, two 16-byte words each, so the 16 words are consecutive. The word
// index is computed once for the chunk instead of once per row; the same words as load_w8.

fn f32_w8(i: u32) -> W8 {
  return W8(bitcast<vec4<f32>>(weights[i]), bitcast<vec4<f32>>(weights[i + 1u]));
}

fn load_block8(e: u32) -> Block8 {
  let i = e >> 2u;
  return Block8(
    f32_w8(i),
    f32_w8(i + 2u),
    f32_w8(i + 4u),
    f32_w8(i + 6u),
    f32_w8(i + 8u),
    f32_w8(i + 10u),
    f32_w8(i + 12u),
    f32_w8(i + 14u),
  );
}
