/**
 * WGSL sources and compute pipelines. A kernel's source is kernels/common.wgsl (the Step uniform
 * and index helpers), then its spec's prelude files (declarations a family of kernels shares, e.g.
 * kernels/sample_common.wgsl), then, for kernels that read weights, the loader of the weights'
 * dtype (kernels/weights_<dtype>.wgsl, defining `load_w4` and `load_w8`; when the kernel reads
 * rows8 chunks with `load_block8` and the loader has none of its own, the dtype's chunk loader
 * after it, BLOCK8_LOADERS, or the generic kernels/weights_block8.wgsl), then
 * kernels/<name>.wgsl. Sources are read relative to this module, which also works inside a `deno
 * compile --include kernels` binary.
 * Pipelines use explicit bind group layouts, so one bind group serves every variant of a kernel
 * (e.g. the decode and prefill tilings of matmul). Every layout, module and pipeline is made inside
 * the device's error scopes (device.ts scopedOn): an invalid one fails the model's open, named.
 *
 * Kernels that read expert pools (`pools` in their spec) bind several pool buffers at once, so
 * one dispatch reaches every expert of a group of pools: the kernel marks the functions that read
 * weights between `// @pool-begin` and `// @pool-end`, and composeSource emits one copy of them
 * and of the weight loader's functions per pool buffer (`weights` renamed `weights_p<k>`, each
 * function `<name>_p<k>`), the pool bindings, and for each void function of the section a
 * dispatcher of the same name taking the pool index first (`switch` over the copies). The branch
 * is taken once per invocation, not per weight load. With `texture` the pool buffers are weight
 * textures (TextureWeight's layout), each copy reading its own (textureWeights).
 */
import type { FloatWeightDType, WeightDType } from "./ops_api.ts";
import { scopedOn } from "./device.ts";
import { weightBlock } from "./weight_dtype.ts";
import {
  checkBindings,
  checkConstants,
  checkParams,
  sharedConstantsSource,
  WEIGHT_TEXTURE_TYPE,
} from "./kernel_interface.ts";

/** How a kernel binds each buffer (or weight texture), in binding order (binding 0 is always the
 * Step uniform). */
export type BindingKind = "uniform" | "read" | "rw" | "texture";

/** Weight loaders, kernels/weights_<loader>.wgsl: for floats, vector loads where rows start on 16
 * bytes and scalar loads at any (even) offset; for quantized types, one loader (rows start on
 * whole blocks); quantized weights repacked in 8-row blocks (matmul only) have their own. */
export type WeightLoader =
  | WeightDType
  | `${FloatWeightDType}_scalar`
  | "q8_0_rows8"
  | "q4_0_rows8"
  | "q5_0_rows8"
  | "q6_k_rows8"
  | "q4_k_rows8";

/** One pipeline: which kernel, which preludes and weight loader, which override constants. */
export interface KernelSpec {
  kernel: string;
  bindings: BindingKind[];
  /** Names of kernels/*.wgsl files composed, in order, after common.wgsl and before the weight
   * loader and the kernel. */
  prelude?: string[];
  weights?: WeightLoader;
  constants?: Record<string, number>;
  /** Values of the kernel's own module-scope u32 `const`s for this pipeline: the lengths of its
   * private arrays, which WGSL cannot take from an override (composeSource rewrites each
   * declaration; see withSizes). llvmpipe keeps an array that the pipeline fills whole in
   * registers, and one it fills in part in memory. */
  sizes?: Record<string, number>;
  /** Pool buffers bound at bindings first.. first + count - 1 (expert kernels; see above). */
  pools?: PoolBindings;
  /** Constants of the kernel the dispatching code relies on (workgroup size, rows per
   * invocation, ...): checked against its `const`/`override` declarations (kernel_interface.ts). */
  expect?: Record<string, number>;
  /** Rows8 chunks read through the generic weights_block8.wgsl even where the dtype has its own
   * chunk loader (OpsOptions.chunkLoaders: false, the baseline). */
  genericBlock8?: boolean;
  /** The weights from a texture (TextureWeight; textureWeights below), bound as "texture". */
  texture?: boolean;
}

/** How many expert pool buffers a kernel binds, from which binding on. */
export interface PoolBindings {
  count: number;
  first: number;
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

/** Weight loaders with a chunk loader of their own for rows8 (the chunk's word index computed
 * once); the others compose the generic weights_block8.wgsl. */
const BLOCK8_LOADERS: Readonly<Record<string, string>> = {
  bf16: "weights_w16_block8",
  f16: "weights_w16_block8",
  f32: "weights_f32_block8",
};

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

/** What every kernel starts with: the shared constants (kernel_interface.ts), then
 * kernels/common.wgsl. */
export function commonSource(): string {
  return [sharedConstantsSource(), kernelSource("common")].join("\n");
}

/** The full WGSL of a kernel: common.wgsl, the preludes, the weight loader (if any), the kernel;
 * with `pools`, the loader and the kernel's pool section once per pool buffer (see above). */
export function composeSource(
  kernel: string,
  weights?: WeightLoader,
  prelude: string[] = [],
  pools?: PoolBindings,
  sizes: Readonly<Record<string, number>> = {},
  genericBlock8 = false,
  texture = false,
): string {
  const parts = [commonSource(), ...prelude.map(kernelSource)];
  const source = withSizes(kernel, kernelSource(kernel), sizes);
  if (pools) {
    if (!weights) throw new KernelComposeError(kernel, "a kernel with pools needs a weight loader");
    const loader = kernelSource(`weights_${weights}`);
    parts.push(
      poolSource(kernel, texture ? textureLoader(kernel, loader) : loader, source, pools, texture),
    );
    return parts.join("\n");
  }
  if (texture) {
    if (!weights) throw new KernelComposeError(kernel, "texture weights need a weight loader");
    return [...parts, ...textureWeights(kernel, weightParts(source, weights, genericBlock8))]
      .join("\n");
  }
  parts.push(...(weights ? weightParts(source, weights, genericBlock8) : [source]));
  return parts.join("\n");
}

/** The weight loader, then (for a kernel reading whole rows8 chunks) the dtype's chunk loader
 * (its own, or one of BLOCK8_LOADERS, else the generic one), then the kernel. */
function weightParts(source: string, weights: WeightLoader, genericBlock8: boolean): string[] {
  const loader = kernelSource(`weights_${weights}`);
  const parts = [loader];
  if (/\bload_block8\b/.test(stripComments(source)) && !/\bfn load_block8\b/.test(loader)) {
    const own = genericBlock8 ? undefined : BLOCK8_LOADERS[weights];
    parts.push(kernelSource(own ?? "weights_block8"));
  }
  parts.push(source);
  return parts;
}

/** The weights binding of a kernel as a texture (KernelSpec.texture). */
const WEIGHTS_BUFFER_DECL = /var<storage,\s*read>\s*weights\s*:\s*array<WeightWord>\s*;/;

/**
 * A kernel's loader, chunk loader and source (weightParts) reading their weights from a texture
 * (TextureWeight): the kernel's `weights` buffer declared as the texture instead, and every
 * `weights[i]` of the loaders a call of `weights_word(i)`, which fetches the word's texel. The
 * loader must read 16-byte words (`alias WeightWord = vec4<u32>`, a texel); the same words reach
 * the same arithmetic, so the results are the buffer's bit for bit.
 */
export function textureWeights(kernel: string, parts: string[]): string[] {
  const out = [textureLoader(kernel, parts[0]), ...parts.slice(1).map(wordsAsTexels)];
  const last = out.length - 1;
  if (!WEIGHTS_BUFFER_DECL.test(out[last])) {
    throw new KernelComposeError(kernel, "no `var<storage, read> weights: array<WeightWord>`");
  }
  out[last] = out[last].replace(WEIGHTS_BUFFER_DECL, `var weights: ${WEIGHT_TEXTURE_TYPE};`);
  if (out.some((p) => /\bweights\s*\[/.test(stripComments(p)))) {
    throw new KernelComposeError(kernel, "a weights[...] index the texture rewrite cannot read");
  }
  return out;
}

/** Every `weights[i]` of a source as `weights_word(i)`. */
function wordsAsTexels(src: string): string {
  return src.replace(/\bweights\[([^[\]]+)\]/g, "weights_word($1)");
}

/** A weight loader reading its words from the texture `weights` (textureWeights): its indexes as
 * weights_word calls, and weights_word itself. Refused unless the loader reads 16-byte words. */
function textureLoader(kernel: string, loader: string): string {
  if (!/alias\s+WeightWord\s*=\s*vec4<u32>\s*;/.test(stripComments(loader))) {
    throw new KernelComposeError(kernel, "texture weights need a loader of 16-byte words");
  }
  return [
    wordsAsTexels(loader),
    "// Word i of the weights: its texel in the weight texture (src/gpu/shader.ts).",
    "fn weights_word(i: u32) -> vec4<u32> {",
    "  return textureLoad(weights, vec2<u32>(i % WEIGHT_TEXTURE_WIDTH, i / WEIGHT_TEXTURE_WIDTH));",
    "}",
  ].join("\n");
}

/** A kernel's source does not have the shape its spec needs (e.g. no pool section). */
export class KernelComposeError extends Error {
  override name = "KernelComposeError";
  constructor(kernel: string, detail: string) {
    super(`kernels/${kernel}.wgsl: ${detail}`);
  }
}

/** A kernel's source with each `const NAME: u32 = <n>u;` of `sizes` set to the given value
 * (KernelSpec.sizes); a name the kernel does not declare that way is a KernelComposeError. */
export function withSizes(
  kernel: string,
  source: string,
  sizes: Readonly<Record<string, number>>,
): string {
  let out = source;
  for (const [name, value] of Object.entries(sizes)) {
    if (!Number.isInteger(value) || value < 1) {
      throw new KernelComposeError(kernel, `size ${name} = ${value} is not a positive integer`);
    }
    const decl = new RegExp(`^const ${name}: u32 = \\d+u;`, "m");
    if (!decl.test(out)) {
      throw new KernelComposeError(kernel, `no "const ${name}: u32 = <n>u;" to size`);
    }
    out = out.replace(decl, `const ${name}: u32 = ${value}u;`);
  }
  return out;
}

const POOL_BEGIN = "// @pool-begin";
const POOL_END = "// @pool-end";

/** WGSL without its comments (line and block). */
function stripComments(src: string): string {
  return src.replace(/\/\*[\s\S]*?\*\//g, "").replace(/\/\/[^\n]*/g, "");
}

/** The module-scope declarations of comment-free WGSL: each ends at a `;` or at the `}` that
 * closes its braces (`struct`, `fn`). */
export function topLevelItems(src: string): string[] {
  const items: string[] = [];
  let depth = 0, start = 0;
  for (let i = 0; i < src.length; i++) {
    const ch = src[i];
    if (ch === "{") depth++;
    else if (ch === "}") {
      depth--;
      if (depth === 0) {
        const rest = src.slice(i + 1).match(/^\s*;/); // `struct S { ... };` is allowed
        const end = i + 1 + (rest ? rest[0].length : 0);
        items.push(src.slice(start, end).trim());
        start = end;
        i = end - 1;
      }
    } else if (ch === ";" && depth === 0) {
      items.push(src.slice(start, i + 1).trim());
      start = i + 1;
    }
  }
  if (src.slice(start).trim() !== "") items.push(src.slice(start).trim());
  return items.filter((x) => x !== "");
}

const FN_HEAD = /^fn\s+(\w+)\s*\(([^)]*)\)\s*(->)?/;

/** Loader and pool section once per pool buffer, the pool bindings and the dispatchers; then the
 * rest of the kernel. */
function poolSource(
  kernel: string,
  loader: string,
  source: string,
  pools: PoolBindings,
  texture = false,
): string {
  const begin = source.indexOf(POOL_BEGIN), end = source.indexOf(POOL_END);
  if (begin < 0 || end < begin) {
    throw new KernelComposeError(kernel, `no ${POOL_BEGIN} ... ${POOL_END} section`);
  }
  if (/\bweights\b/.test(stripComments(source.slice(0, begin) + source.slice(end)))) {
    throw new KernelComposeError(kernel, "`weights` used outside the pool section");
  }
  const loaderItems = topLevelItems(stripComments(loader));
  const isFn = (item: string) => FN_HEAD.test(item);
  const sectionFns = topLevelItems(stripComments(source.slice(begin + POOL_BEGIN.length, end)));
  if (!sectionFns.every(isFn)) {
    throw new KernelComposeError(kernel, "the pool section may hold functions only");
  }
  const copied = [...loaderItems.filter(isFn), ...sectionFns];
  const names = ["weights", ...copied.map((f) => f.match(FN_HEAD)![1])];
  const renamer = new RegExp(`\\b(${names.join("|")})\\b`, "g");
  const out = loaderItems.filter((item) => !isFn(item)); // alias WeightWord, struct W8
  for (let k = 0; k < pools.count; k++) {
    const type = texture ? WEIGHT_TEXTURE_TYPE : "array<WeightWord>";
    const space = texture ? "" : "<storage, read>";
    out.push(`@group(0) @binding(${pools.first + k}) var${space} weights_p${k}: ${type};`);
    out.push(...copied.map((f) => f.replace(renamer, `$1_p${k}`)));
  }
  for (const f of sectionFns) {
    const [, name, params, ret] = f.match(FN_HEAD)!;
    if (ret) continue; // only void functions get a dispatcher
    const args = params.split(",").map((x) => x.trim()).filter((x) => x !== "")
      .map((x) => x.split(":")[0].trim());
    const cases = Array.from(
      { length: pools.count },
      (_, k) => `    case ${k}u: { ${name}_p${k}(${args.join(", ")}); }`,
    );
    out.push(
      [
        `fn ${name}(pool: u32${params.trim() ? `, ${params.trim()}` : ""}) {`,
        "  switch pool {",
        ...cases,
        "    default: {}",
        "  }",
        "}",
      ].join("\n"),
    );
  }
  return [out.join("\n"), source.slice(0, begin), source.slice(end + POOL_END.length)].join("\n");
}

const BUFFER_TYPE: Record<Exclude<BindingKind, "texture">, GPUBufferBindingType> = {
  uniform: "uniform",
  read: "read-only-storage",
  rw: "storage",
};

/** Caches bind group layouts and compute pipelines of one device. */
export class Shaders {
  private layouts = new Map<string, GPUBindGroupLayout>();
  private pipelines = new Map<string, GPUComputePipeline>();
  private modules = new Map<string, GPUShaderModule>();
  private codes = new Map<string, string>();

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
              ...(kind === "texture"
                ? {
                  storageTexture: {
                    access: "read-only" as const,
                    format: "rgba32uint" as const,
                    viewDimension: "2d" as const,
                  },
                }
                : { buffer: { type: BUFFER_TYPE[kind] } }),
            })),
          }),
      );
      this.layouts.set(key, layout);
    }
    return layout;
  }

  /** The composed source of a spec (cached per module). */
  private code(spec: KernelSpec): { moduleKey: string; code: string } {
    // Preludes and kernel, then the weight loader: "sample_common+sample_draw|", "matmul|bf16".
    const pools = spec.pools ? `|pools${spec.pools.count}@${spec.pools.first}` : "";
    const prelude = spec.prelude ?? [];
    const sizes = Object.entries(spec.sizes ?? {}).map(([k, v]) => `#${k}=${v}`).join("");
    const generic = spec.genericBlock8 ? "|generic-block8" : "";
    const texture = spec.texture ? "|texture" : "";
    const moduleKey = `${[...prelude, spec.kernel].join("+")}|${
      spec.weights ?? ""
    }${pools}${sizes}${generic}${texture}`;
    let code = this.codes.get(moduleKey);
    if (code === undefined) {
      code = composeSource(
        spec.kernel,
        spec.weights,
        prelude,
        spec.pools,
        spec.sizes,
        spec.genericBlock8,
        spec.texture,
      );
      this.codes.set(moduleKey, code);
    }
    return { moduleKey, code };
  }

  /** Throws KernelInterfaceError unless `values` params fill the spec's kernel's Params. */
  checkParams(spec: KernelSpec, values: number): void {
    checkParams(spec.kernel, this.code(spec).code, values);
  }

  /** The compute pipeline of a spec (entry point `main`), created once, after checking the
   * kernel's declared bindings and expected constants against the spec (kernel_interface.ts). */
  pipeline(spec: KernelSpec): GPUComputePipeline {
    const constants = spec.constants ?? {};
    const { moduleKey, code } = this.code(spec);
    const key = `${moduleKey}|${spec.bindings.join(",")}|${JSON.stringify(constants)}`;
    if (spec.expect) checkConstants(spec.kernel, code, spec.expect);
    let pipeline = this.pipelines.get(key);
    if (!pipeline) {
      checkBindings(spec.kernel, code, spec.bindings);
      let module = this.modules.get(moduleKey);
      if (!module) {
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
