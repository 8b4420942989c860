/**
 * GGUF checkpoints (llama.cpp's format) read as Hugging Face checkpoints: `openGguf(path)` gives a
 * Checkpoint that src/weights.ts's loadWeights and the packer consume unchanged, and
 * `writeTokenizerFromGguf(meta, dir)` the tokenizer files src/tokenizer.ts loads.
 *
 *   file.ts       one GGUF file: header, metadata, tensor infos, checks, memory map
 *   split.ts      gguf-split models (NAME-00001-of-0000N.gguf) opened as one
 *   metadata.ts   metadata value types and typed look-ups
 *   ggml_type.ts  GGML tensor types the runtime reads
 *   qwen3moe.ts   the qwen3moe architecture: config and HF tensor names
 *   tokenizer.ts  tokenizer.json / tokenizer_config.json from tokenizer metadata
 */

export {
  DEFAULT_ALIGNMENT,
  type GgufFile,
  GgufFormatError,
  type GgufHeader,
  GgufTensorDataError,
  type GgufTensorInfo,
  GgufTensorTypeError,
  GgufVersionError,
  openGgufFile,
  parseGguf,
} from "./file.ts";
export { GGML_TYPES, ggmlTypeId, ggmlTypeName } from "./ggml_type.ts";
export {
  getBool,
  getFloat,
  getInt,
  getIntArray,
  getString,
  getStringArray,
  type GgufArray,
  type GgufKv,
  type GgufMetadata,
  GgufMetadataError,
  type GgufValue,
  type GgufValueType,
} from "./metadata.ts";
export {
  type GgufModel,
  GgufSplitError,
  type GgufTensorRef,
  openGgufModel,
  SPLIT_KEYS,
  splitPath,
} from "./split.ts";
export {
  GGUF_ARCH,
  GgufArchitectureError,
  type GgufCheckpoint,
  ggufConfig,
  ggufConfigJson,
  GgufShapeError,
  openGguf,
} from "./qwen3moe.ts";
export {
  GgufTokenizerError,
  ggufTokenizerFiles,
  TOKEN_TYPES,
  writeTokenizerFromGguf,
} from "./tokenizer.ts";
