/**
 * Checkpoint reading for the CPU float64 reference, written independently of the production
 * loader (src/safetensors.ts, src/config.ts) so the two can check each other: a safetensors
 * header parser of its own, element decoding of BF16/F16/F32 straight to float64, and reads of
 * whole tensors or element ranges by seeking in the shard file (nothing is mapped or kept).
 */

/** A checkpoint file is malformed: a bad header, a missing shard, a tensor of the wrong size. */
export class ReferenceCheckpointError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "ReferenceCheckpointError";
  }
}

/** A tensor the reference needs is absent from every shard. */
export class ReferenceMissingTensorError extends Error {
  constructor(name: string, dir: string) {
    super(
      `tensor "${name}" is in no safetensors file of ${dir}; check the checkpoint is complete ` +
        `and of a Qwen3-MoE / Qwen3-Omni model`,
    );
    this.name = "ReferenceMissingTensorError";
  }
}

/** Size of the little-endian u64 in front of the JSON header. */
const HEADER_LENGTH_BYTES = 8;
/** Bytes per element of the dtypes the reference decodes. */
const ELEMENT_BYTES: Record<string, number> = { F32: 4, BF16: 2, F16: 2 };
/** safetensors' header key for free-form metadata (not a tensor). */
const METADATA_KEY = "__metadata__";
/** Hugging Face's file names for one-file and sharded checkpoints. */
const SINGLE_FILE = "model.safetensors";
const INDEX_FILE = "model.safetensors.index.json";

/** Where one tensor lives on disk. */
interface TensorLocation {
  path: string;
  dtype: string;
  shape: number[];
  /** Absolute byte offset of its first element in the file. */
  start: number;
}

/** Decodes `count` little-endian elements of `dtype` from bytes into float64, exactly. */
export function decodeFloat64(dtype: string, bytes: Uint8Array, count: number): Float64Array {
  const out = new Float64Array(count);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const bits = new Uint32Array(1);
  const asF32 = new Float32Array(bits.buffer);
  if (dtype === "F32") {
    for (let i = 0; i < count; i++) out[i] = view.getFloat32(4 * i, true);
  } else if (dtype === "BF16") {
    // bf16 is the upper half of an f32's bits
    for (let i = 0; i < count; i++) {
      bits[0] = view.getUint16(2 * i, true) << 16;
      out[i] = asF32[0];
    }
  } else if (dtype === "F16") {
    for (let i = 0; i < count; i++) out[i] = halfToNumber(view.getUint16(2 * i, true));
  } else {
    throw new ReferenceCheckpointError(
      `dtype ${dtype} is not decoded by the reference; convert the checkpoint to BF16, F16 or F32`,
    );
  }
  return out;
}

/** IEEE half-precision bits to their value: sign, 5-bit exponent (bias 15), 10-bit fraction. */
function halfToNumber(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exponent = (h >> 10) & 0x1f;
  const fraction = h & 0x3ff;
  if (exponent === 0) return sign * fraction * 2 ** -24; // zero and subnormals
  if (exponent === 31) return fraction ? NaN : sign * Infinity;
  return sign * (1 + fraction / 1024) * 2 ** (exponent - 15);
}

/** Every tensor of a checkpoint directory, read on demand as float64. */
export class CheckpointTensors {
  private readonly files = new Map<string, Deno.FsFile>();

  private constructor(
    readonly dir: string,
    private readonly locations: Map<string, TensorLocation>,
  ) {}

  /** Indexes model.safetensors, or every shard named by model.safetensors.index.json. */
  static open(dir: string): CheckpointTensors {
    const shardNames = listShards(dir);
    const locations = new Map<string, TensorLocation>();
    for (const shard of shardNames) {
      const path = `${dir}/${shard}`;
      for (const [name, location] of readHeader(path)) locations.set(name, location);
    }
    return new CheckpointTensors(dir, locations);
  }

  has(name: string): boolean {
    return this.locations.has(name);
  }

  shape(name: string): number[] {
    return this.locate(name).shape;
  }

  /** The whole tensor, row-major, as float64; its shape must equal `shape`. */
  read(name: string, shape: number[]): Float64Array {
    const location = this.locate(name);
    if (location.shape.join(",") !== shape.join(",")) {
      throw new ReferenceCheckpointError(
        `tensor "${name}" has shape [${location.shape}] but the config implies [${shape}]; ` +
          `the checkpoint does not match its config.json`,
      );
    }
    return this.readRange(name, 0, shape.reduce((a, b) => a * b, 1));
  }

  /** `count` consecutive elements of the row-major tensor, from element `first`, as float64. */
  readRange(name: string, first: number, count: number): Float64Array {
    const location = this.locate(name);
    const width = ELEMENT_BYTES[location.dtype];
    if (width === undefined) {
      throw new ReferenceCheckpointError(
        `tensor "${name}" is ${location.dtype}; the reference reads BF16, F16 and F32 only`,
      );
    }
    if (first < 0 || count < 0 || first + count > location.shape.reduce((a, b) => a * b, 1)) {
      throw new ReferenceCheckpointError(
        `elements ${first}..${first + count} are outside tensor "${name}" [${location.shape}]`,
      );
    }
    const bytes = new Uint8Array(count * width);
    const file = this.file(location.path);
    file.seekSync(location.start + first * width, Deno.SeekMode.Start);
    let filled = 0;
    while (filled < bytes.length) {
      const n = file.readSync(bytes.subarray(filled));
      if (n === null || n === 0) {
        throw new ReferenceCheckpointError(`${location.path} ends inside tensor "${name}"`);
      }
      filled += n;
    }
    return decodeFloat64(location.dtype, bytes, count);
  }

  /** Closes every shard file opened so far. */
  close(): void {
    for (const file of this.files.values()) file.close();
    this.files.clear();
  }

  private locate(name: string): TensorLocation {
    const location = this.locations.get(name);
    if (!location) throw new ReferenceMissingTensorError(name, this.dir);
    return location;
  }

  private file(path: string): Deno.FsFile {
    let file = this.files.get(path);
    if (!file) {
      file = Deno.openSync(path, { read: true });
      this.files.set(path, file);
    }
    return file;
  }
}

/** Shard file names of a checkpoint directory, from its index or the single-file name. */
function listShards(dir: string): string[] {
  let indexText: string | null = null;
  try {
    indexText = Deno.readTextFileSync(`${dir}/${INDEX_FILE}`);
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
  }
  if (indexText === null) return [SINGLE_FILE];
  const index = JSON.parse(indexText) as { weight_map?: Record<string, string> };
  if (!index.weight_map) {
    throw new ReferenceCheckpointError(`${dir}/${INDEX_FILE} has no weight_map; regenerate it`);
  }
  return [...new Set(Object.values(index.weight_map))].sort();
}

/** Parses one safetensors header: u64 length, JSON {name: {dtype, shape, data_offsets}}. */
function readHeader(path: string): Map<string, TensorLocation> {
  const file = Deno.openSync(path, { read: true });
  try {
    const lengthBytes = new Uint8Array(HEADER_LENGTH_BYTES);
    if (file.readSync(lengthBytes) !== HEADER_LENGTH_BYTES) {
      throw new ReferenceCheckpointError(`${path} is shorter than a safetensors header`);
    }
    const headerLength = Number(new DataView(lengthBytes.buffer).getBigUint64(0, true));
    const fileSize = file.statSync().size;
    if (headerLength > fileSize - HEADER_LENGTH_BYTES) {
      throw new ReferenceCheckpointError(`${path}: header length ${headerLength} exceeds the file`);
    }
    const headerBytes = new Uint8Array(headerLength);
    let filled = 0;
    while (filled < headerLength) {
      const n = file.readSync(headerBytes.subarray(filled));
      if (!n) throw new ReferenceCheckpointError(`${path} ends inside its header`);
      filled += n;
    }
    const header = JSON.parse(new TextDecoder().decode(headerBytes)) as Record<
      string,
      { dtype: string; shape: number[]; data_offsets: [number, number] }
    >;
    const dataStart = HEADER_LENGTH_BYTES + headerLength;
    const out = new Map<string, TensorLocation>();
    for (const [name, entry] of Object.entries(header)) {
      if (name === METADATA_KEY) continue;
      const [begin, end] = entry.data_offsets;
      const width = ELEMENT_BYTES[entry.dtype];
      const elements = entry.shape.reduce((a, b) => a * b, 1);
      if (width !== undefined && end - begin !== elements * width) {
        throw new ReferenceCheckpointError(
          `${path}: tensor "${name}" spans ${end - begin} bytes, not ${elements} x ${width}`,
        );
      }
      if (dataStart + end > fileSize) {
        throw new ReferenceCheckpointError(`${path}: tensor "${name}" runs past the end of file`);
      }
      out.set(name, { path, dtype: entry.dtype, shape: entry.shape, start: dataStart + begin });
    }
    return out;
  } finally {
    file.close();
  }
}
