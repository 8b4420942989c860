// Weight loader for bf16 weights: two elements per u32 of `weights`, element 2i in the low half.
// A bf16 value is the upper half of an f32, so widening is a shift (exact).
// load_w4(e) returns elements e..e+3 (e even).
fn load_w4(e: u32) -> vec4<f32> {
  let i = e >> 1u;
  let a = weights[i];
  let b = weights[i + 1u];
  return vec4<f32>(
    bitcast<f32>(a << 16u),
    bitcast<f32>(a & 0xffff0000u),
    bitcast<f32>(b << 16u),
    bitcast<f32>(b & 0xffff0000u),
  );
}
