// load_block8 for weight loaders that have no faster one (composed after them by src/gpu/shader.ts
// when the kernel calls it): the 8 rows of a rows8 chunk, row r's 8 elements at e + 8 r, each read
// by load_w8 (Block8 is declared by the kernel, matmul.wgsl).

fn load_block8(e: u32) -> Block8 {
  return Block8(
    load_w8(e),
    load_w8(e + 8u),
    load_w8(e + 16u),
    load_w8(e + 24u),
    load_w8(e + 32u),
    load_w8(e + 40u),
    load_w8(e + 48u),
    load_w8(e + 56u),
  );
}
