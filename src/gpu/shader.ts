/**
 * WGSL sources and compute pipelines. A kernel's source is kernels/common.wgsl (the Step uniform
 * and index helpers), then its spec's prelude files (declarations a family of kernels shares, e.g.
 * kernels/sample_common.wgsl), then, for kernels that read weights, the loader of the weights'
 * dtype (kernels/weights_<dtype>.wgsl, defining `load_w4`), then kernels/<name>.wgsl. Sources are
 * read relative to this module, which also works inside a `deno compile --include kernels` binary.
 * Pipelines use explicit bind group layouts, so one bind group serves every variant of a kernel
 * (e.g. the decode and prefill tilings of matmul). Every layout, module and pipeline is made inside
 * the device's error scopes (device.ts scopedOn): an invalid one fails the model's open, named.
 */
import type { FloatWeightDType, WeightDType } from "./ops_api.ts";
import { scopedOn } from "./device.ts";
import { weightBlock } from "./weight_dtype.ts";

/** How a kernel binds each buffer, in binding order (binding 0 is always the Step uniform). */
export type BindingKind = "uniform" | "read" | "rw";

/** Weight loaders, kernels/weights_<loader>.wgsl: for floats, vector loads where rows start on 16
 * bytes and scalar loads at any (even) offset; for quantized types, one loader (rows start on
 * whole blocks). */
export type WeightLoader = WeightDType | `${FloatWeightDType}_scalar`;

/** One pipeline: which kernel, which preludes and weight loader, which override constants. */
export interface KernelSpec {
  kernel: string;
  bindings: BindingKind[];
  /** Names of kernels/*.wgsl files composed, in order, after common.wgsl and before the weight
   * loader and the kernel. */
  prelude?: string[];
  weights?: WeightLoader;
  constants?: Record<string, number>;
}

/** Elements per 16 bytes, the alignment of the vector loaders' rows. */
const ELEMS_PER_16_BYTES: Record<FloatWeightDType, number> = { f32: 4, bf16: 8, f16: 8 };

/** A quantized matrix whose rows do not start on whole blocks. */
export class WeightLayoutError extends Error {
  override name = "WeightLayoutError";
}

/** The fastest loader for weights whose rows all start at element offsets `rowStarts` plus
 * multiples of `rowStrides` (the vector loader needs every row on a 16-byte boundary; a quantized
 * type needs every row on a whole block, else WeightLayoutError). */
export function weightLoader(
  dtype: WeightDType,
  rowStarts: number[],
  rowStrides: number[],
): WeightLoader {
  const block = weightBlock(dtype).elems;
  const offsets = [...rowStarts, ...rowStrides];
  if (block > 1) {
    const bad = offsets.find((v) => v % block !== 0);
    if (bad !== undefined) {
      throw new WeightLayoutError(
        `${dtype} weights need rows on whole blocks of ${block} elements; ${bad} is not`,
      );
    }
    return dtype;
  }
  const align = ELEMS_PER_16_BYTES[dtype as FloatWeightDType];
  const aligned = offsets.every((v) => v % align === 0);
  return aligned ? dtype : `${dtype as FloatWeightDType}_scalar`;
}

/** A kernels/*.wgsl file could not be read. */
export class KernelSourceError extends Error {
  override name = "KernelSourceError";
  constructor(name: string, cause: unknown) {
    super(
      `cannot read kernels/${name}.wgsl (${cause}); run from the repository, or build the ` +
        `binary with deno compile --include kernels`,
    );
  }
}

const sources = new Map<string, string>();

/** The text of kernels/NAME.wgsl (cached). */
export function kernelSource(name: string): string {
  let text = sources.get(name);
  if (text === undefined) {
    try {
      text = Deno.readTextFileSync(new URL(`../../kernels/${name}.wgsl`, import.meta.url));
    } catch (e) {
      throw new KernelSourceError(name, e);
    }
    sources.set(name, text);
  }
  return text;
}

/** The full WGSL of a kernel: common.wgsl, the preludes, the weight loader (if any), the kernel. */
export function composeSource(
  kernel: string,
  weights?: WeightLoader,
  prelude: string[] = [],
): string {
  const parts = [kernelSource("common"), ...prelude.map(kernelSource)];
  if (weights) parts.push(kernelSource(`weights_${weights}`));
  parts.push(kernelSource(kernel));
  return parts.join("\n");
}

const BUFFER_TYPE: Record<BindingKind, GPUBufferBindingType> = {
  uniform: "uniform",
  read: "read-only-storage",
  rw: "storage",
};

/** Caches bind group layouts and compute pipelines of one device. */
export class Shaders {
  private layouts = new Map<string, GPUBindGroupLayout>();
  private pipelines = new Map<string, GPUComputePipeline>();
  private modules = new Map<string, GPUShaderModule>();

  constructor(private device: GPUDevice) {}

  /** The bind group layout for these bindings (all visible to compute). */
  layout(bindings: BindingKind[]): GPUBindGroupLayout {
    const key = bindings.join(",");
    let layout = this.layouts.get(key);
    if (!layout) {
      layout = scopedOn(
        this.device,
        `bind group layout ${key}`,
        () =>
          this.device.createBindGroupLayout({
            label: key,
            entries: bindings.map((kind, binding) => ({
              binding,
              visibility: GPUShaderStage.COMPUTE,
              buffer: { type: BUFFER_TYPE[kind] },
            })),
          }),
      );
      this.layouts.set(key, layout);
    }
    return layout;
  }

  /** The compute pipeline of a spec (entry point `main`), created once. */
  pipeline(spec: KernelSpec): GPUComputePipeline {
    const constants = spec.constants ?? {};
    const prelude = spec.prelude ?? [];
    // Preludes and kernel, then the weight loader: "sample_common+sample_draw|", "matmul|bf16".
    const moduleKey = `${[...prelude, spec.kernel].join("+")}|${spec.weights ?? ""}`;
    const key = `${moduleKey}|${spec.bindings.join(",")}|${JSON.stringify(constants)}`;
    let pipeline = this.pipelines.get(key);
    if (!pipeline) {
      let module = this.modules.get(moduleKey);
      if (!module) {
        const code = composeSource(spec.kernel, spec.weights, prelude);
        module = scopedOn(
          this.device,
          `shader module ${moduleKey}`,
          () => this.device.createShaderModule({ label: moduleKey, code }),
        );
        this.modules.set(moduleKey, module);
      }
      const layout = this.layout(spec.bindings);
      pipeline = scopedOn(this.device, `pipeline ${key}`, () =>
        this.device.createComputePipeline({
          label: key,
          layout: this.device.createPipelineLayout({ bindGroupLayouts: [layout] }),
          compute: { module, entryPoint: "main", constants },
        }));
      this.pipelines.set(key, pipeline);
    }
    return pipeline;
  }
}
