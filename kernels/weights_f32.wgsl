// Weight loaders for f32 weights whose rows start on 16 bytes (element offset a multiple of 4):
// `weights` (declared by the kernel as array<WeightWord>) is read 4 elements per load, which on
// llvmpipe costs far less than 4 scalar loads. load_w4(e) returns elements e..e+3, load_w8(e)
// e..e+7 (e a multiple of 4).

alias WeightWord = vec4<u32>;

struct W8 {
  lo: vec4<f32>,
  hi: vec4<f32>,
}

fn load_w4(e: u32) -> vec4<f32> {
  return bitcast<vec4<f32>>(weights[e >> 2u]);
}

fn load_w8(e: u32) -> W8 {
  let i = e >> 2u;
  return W8(bitcast<vec4<f32>>(weights[i]), bitcast<vec4<f32>>(weights[i + 1u]));
}
