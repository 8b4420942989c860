/** Workgroup sizes for the tests that force the row-sharing kernels (OpsOptions.sharedSizes):
 * the adapter's by default; MOE_TEST_GPU_SIZES=1 runs a GPU's (256 lanes, 16 x 16 tiles) on
 * llvmpipe too, which compiles them for minutes (a one-off check, not CI's). */
export const SHARED_SIZES: "gpu" | undefined = Deno.env.get("MOE_TEST_GPU_SIZES") === "1"
  ? "gpu"
  : undefined;
