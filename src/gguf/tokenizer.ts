/**
 * A Hugging Face tokenizer.json + tokenizer_config.json rebuilt from a GGUF file's tokenizer
 * metadata, so src/tokenizer.ts's loadTokenizer() serves a GGUF model as it serves a checkpoint.
 *
 * Only byte-level BPE (`tokenizer.ggml.model` "gpt2") with Qwen2's pre-tokenizer
 * (`tokenizer.ggml.pre` "qwen2", what convert_hf_to_gguf.py writes for Qwen2/Qwen3 vocabularies)
 * is rebuilt; the JSON has the structure of Qwen3's own tokenizer.json (NFC normalizer, the Split
 * regex below then ByteLevel without its regex, ByteLevel decoder). Token types (gguf-py TokenType)
 * decide where each token goes: NORMAL and UNKNOWN into the BPE vocab, CONTROL into added_tokens
 * as special, USER_DEFINED into added_tokens as not special (both matched in raw text, as llama.cpp
 * matches them), UNUSED (convert's "[PAD{i}]" fillers up to vocab_size) nowhere.
 */

import { join } from "node:path";
import { bpeModel, type TokenizerConfig } from "../tokenizer.ts";
import {
  getBool,
  getInt,
  getIntArray,
  getString,
  getStringArray,
  type GgufMetadata,
  required,
} from "./metadata.ts";

/** The tokenizer metadata is missing, of another kind, or inconsistent. */
export class GgufTokenizerError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "GgufTokenizerError";
  }
}

/** Tokenizer metadata keys (gguf-py constants.py Keys.Tokenizer). */
export const TOKENIZER_KEYS = {
  model: "tokenizer.ggml.model",
  pre: "tokenizer.ggml.pre",
  tokens: "tokenizer.ggml.tokens",
  tokenType: "tokenizer.ggml.token_type",
  merges: "tokenizer.ggml.merges",
  bos: "tokenizer.ggml.bos_token_id",
  eos: "tokenizer.ggml.eos_token_id",
  pad: "tokenizer.ggml.padding_token_id",
  addBos: "tokenizer.ggml.add_bos_token",
  addEos: "tokenizer.ggml.add_eos_token",
  chatTemplate: "tokenizer.chat_template",
  chatTemplateNames: "tokenizer.chat_templates",
} as const;

/** gguf-py TokenType. */
export const TOKEN_TYPES = {
  NORMAL: 1,
  UNKNOWN: 2,
  CONTROL: 3,
  USER_DEFINED: 4,
  UNUSED: 5,
  BYTE: 6,
} as const;

/** The one GGUF tokenizer model rebuilt: byte-level BPE. */
const BPE_MODEL = "gpt2";

/**
 * Pre-tokenizer regexes by `tokenizer.ggml.pre`: Qwen2's, as in Qwen2/Qwen3's tokenizer.json
 * (llama-vocab.cpp LLAMA_VOCAB_PRE_TYPE_QWEN2 quotes it as "original regex from tokenizer.json").
 */
export const PRE_TOKENIZER_REGEX: Record<string, string> = {
  qwen2: "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+" +
    "[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
};

/** ByteLevel after the Split: no second regex (as Qwen's tokenizer.json has it). */
const BYTE_LEVEL = {
  type: "ByteLevel",
  add_prefix_space: false,
  trim_offsets: false,
  use_regex: false,
};

export interface GgufTokenizerFiles {
  /** tokenizer.json's content. */
  tokenizer: Record<string, unknown>;
  /** tokenizer_config.json's content. */
  config: TokenizerConfig;
}

interface AddedToken {
  id: number;
  content: string;
  single_word: boolean;
  lstrip: boolean;
  rstrip: boolean;
  normalized: boolean;
  special: boolean;
}

/** Splits the tokens by type into the BPE vocab and the added tokens. */
function sortTokens(tokens: string[], types: number[] | undefined, source: string) {
  if (types !== undefined && types.length !== tokens.length) {
    throw new GgufTokenizerError(
      `${source}: ${TOKENIZER_KEYS.tokenType} has ${types.length} entries for ` +
        `${tokens.length} tokens; the file is damaged: convert it again`,
    );
  }
  const vocab: Record<string, number> = {};
  const added: AddedToken[] = [];
  for (let id = 0; id < tokens.length; id++) {
    const type = types?.[id] ?? TOKEN_TYPES.NORMAL;
    const content = tokens[id];
    if (type === TOKEN_TYPES.NORMAL || type === TOKEN_TYPES.UNKNOWN) {
      if (Object.hasOwn(vocab, content)) {
        throw new GgufTokenizerError(
          `${source}: token ${JSON.stringify(content)} is both id ${vocab[content]} and ${id}; ` +
            `a BPE vocabulary needs distinct tokens: convert the model again`,
        );
      }
      vocab[content] = id;
    } else if (type === TOKEN_TYPES.CONTROL || type === TOKEN_TYPES.USER_DEFINED) {
      const special = type === TOKEN_TYPES.CONTROL;
      added.push({
        id,
        content,
        single_word: false,
        lstrip: false,
        rstrip: false,
        normalized: false,
        special,
      });
    } else if (type !== TOKEN_TYPES.UNUSED) {
      throw new GgufTokenizerError(
        `${source}: token ${id} ${JSON.stringify(content)} has type ${type}, which a byte-level ` +
          `BPE vocabulary does not use (1-5); the file is damaged or not a gpt2 tokenizer`,
      );
    }
  }
  return { vocab, added };
}

/** "a b" merge strings as [a, b] pairs (llama-vocab.cpp splits at the first space after 0). */
function splitMerges(merges: string[], source: string): [string, string][] {
  return merges.map((m, i) => {
    const at = m.indexOf(" ", 1);
    if (at < 0) {
      throw new GgufTokenizerError(
        `${source}: ${TOKENIZER_KEYS.merges}[${i}] ${JSON.stringify(m)} is not "left right"`,
      );
    }
    return [m.slice(0, at), m.slice(at + 1)];
  });
}

/** The token text of an id key, or null when the key is absent. */
function tokenOf(meta: GgufMetadata, key: string, tokens: string[], source: string) {
  const id = getInt(meta, key, source);
  if (id === undefined) return null;
  if (id < 0 || id >= tokens.length) {
    throw new GgufTokenizerError(
      `${source}: ${key} is ${id} but there are ${tokens.length} tokens; damaged file`,
    );
  }
  return tokens[id];
}

/** The chat template, or a list of named ones when the file has tokenizer.chat_template.NAME. */
function chatTemplates(meta: GgufMetadata, source: string): TokenizerConfig["chat_template"] {
  const main = getString(meta, TOKENIZER_KEYS.chatTemplate, source);
  const names = getStringArray(meta, TOKENIZER_KEYS.chatTemplateNames, source) ?? [];
  const named = names.flatMap((name) => {
    const template = getString(meta, `${TOKENIZER_KEYS.chatTemplate}.${name}`, source);
    return template === undefined ? [] : [{ name, template }];
  });
  if (named.length === 0) return main;
  return main === undefined ? named : [{ name: "default", template: main }, ...named];
}

/** tokenizer.json and tokenizer_config.json contents for a GGUF file's tokenizer metadata. */
export function ggufTokenizerFiles(meta: GgufMetadata, source: string): GgufTokenizerFiles {
  const K = TOKENIZER_KEYS;
  const model = required(getString(meta, K.model, source), K.model, source, "the tokenizer kind");
  if (model !== BPE_MODEL) {
    throw new GgufTokenizerError(
      `${source}: ${K.model} is ${JSON.stringify(model)}; this runtime rebuilds byte-level BPE ` +
        `("${BPE_MODEL}") tokenizers only, as Qwen models have: use the model's tokenizer.json`,
    );
  }
  const pre = getString(meta, K.pre, source);
  const regex = pre === undefined ? undefined : PRE_TOKENIZER_REGEX[pre];
  if (regex === undefined) {
    throw new GgufTokenizerError(
      `${source}: ${K.pre} is ${JSON.stringify(pre ?? null)}; this runtime knows the ` +
        `pre-tokenizer of ${Object.keys(PRE_TOKENIZER_REGEX).join(", ")} only (Qwen models): ` +
        `use the model's tokenizer.json`,
    );
  }
  const tokens = required(getStringArray(meta, K.tokens, source), K.tokens, source, "the vocab");
  const { vocab, added } = sortTokens(tokens, getIntArray(meta, K.tokenType, source), source);
  const merges = splitMerges(getStringArray(meta, K.merges, source) ?? [], source);
  const tokenizer = {
    version: "1.0",
    truncation: null,
    padding: null,
    added_tokens: added,
    normalizer: { type: "NFC" },
    pre_tokenizer: {
      type: "Sequence",
      pretokenizers: [
        { type: "Split", pattern: { Regex: regex }, behavior: "Isolated", invert: false },
        BYTE_LEVEL,
      ],
    },
    post_processor: BYTE_LEVEL,
    decoder: BYTE_LEVEL,
    model: bpeModel(vocab, merges),
  };
  const config: TokenizerConfig = {
    add_bos_token: getBool(meta, K.addBos, source) ?? false,
    add_eos_token: getBool(meta, K.addEos, source) ?? false,
    bos_token: tokenOf(meta, K.bos, tokens, source),
    eos_token: tokenOf(meta, K.eos, tokens, source),
    pad_token: tokenOf(meta, K.pad, tokens, source),
    unk_token: null,
    clean_up_tokenization_spaces: false,
    errors: "replace",
    split_special_tokens: false,
    tokenizer_class: "Qwen2Tokenizer",
    added_tokens_decoder: Object.fromEntries(
      added.map(({ id, ...rest }) => [String(id), rest]),
    ),
  };
  const template = chatTemplates(meta, source);
  if (template !== undefined) config.chat_template = template;
  return { tokenizer, config };
}

/** Writes dir/tokenizer.json and dir/tokenizer_config.json for a GGUF file's metadata. */
export async function writeTokenizerFromGguf(
  meta: GgufMetadata,
  dir: string,
  source = dir,
): Promise<void> {
  const { tokenizer, config } = ggufTokenizerFiles(meta, source);
  await Deno.mkdir(dir, { recursive: true });
  await Deno.writeTextFile(join(dir, "tokenizer.json"), JSON.stringify(tokenizer));
  await Deno.writeTextFile(join(dir, "tokenizer_config.json"), JSON.stringify(config, null, 2));
}
