/**
 * Text <-> token ids for a model directory (tokenizer.json + tokenizer_config.json), built on npm
 * `@huggingface/tokenizers`, plus an incremental decoder that only emits complete characters, and
 * `writeByteTokenizer()` that gives any small-vocab fixture a valid byte-level tokenizer.
 */
import { Tokenizer as HfTokenizer } from "@huggingface/tokenizers";
import { join } from "node:path";

/** Special tokens every Qwen chat model knows, in the order writeByteTokenizer() assigns ids. */
export const QWEN_SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] as const;

/** One byte-level token per byte value. */
const BYTE_TOKENS = 256;

/** Replacement character a UTF-8 decoder emits for an incomplete byte sequence. */
const REPLACEMENT_CHAR = "\uFFFD";

const utf8 = new TextEncoder();

/** One token on its own, as logprobs report it. */
export interface TokenPiece {
  /** The token decoded alone: special tokens as written, "" for an id past the vocab, U+FFFD for
   * a part of a multi-byte character. */
  text: string;
  /** Its bytes: a byte-level BPE token's own (possibly part of a character), else text's UTF-8. */
  bytes: number[];
}

/** The directory lacks a file the tokenizer needs, or the file is not valid JSON. */
export class TokenizerFileError extends Error {
  override name = "TokenizerFileError";
}

/** writeByteTokenizer() was asked for a vocab too small to hold the bytes and special tokens. */
export class VocabTooSmallError extends Error {
  override name = "VocabTooSmallError";
}

/** The parts of tokenizer_config.json the runtime reads. */
export interface TokenizerConfig {
  chat_template?: string | { name: string; template: string }[];
  eos_token?: string | { content: string } | null;
  bos_token?: string | { content: string } | null;
  [key: string]: unknown;
}

/** Encodes and decodes text for one model. */
export class Tokenizer {
  readonly #hf: HfTokenizer;
  /** The raw tokenizer_config.json (chat template, special tokens). */
  readonly config: TokenizerConfig;
  /** tokenizer_config.json's eos_token as text, or null. */
  readonly eosToken: string | null;
  /** tokenizer_config.json's bos_token as text, or null. */
  readonly bosToken: string | null;
  /** The id of eosToken, or null when there is none. */
  readonly eosTokenId: number | null;
  /** Byte of each character of a byte-level BPE vocab (GPT-2's table), or null (other decoders). */
  readonly #byteOf: Map<string, number> | null;
  /** tokenPiece() of every id asked so far. */
  readonly #pieces = new Map<number, TokenPiece>();

  constructor(tokenizerJson: object, config: TokenizerConfig) {
    this.#hf = new HfTokenizer(tokenizerJson, config);
    this.config = config;
    this.eosToken = tokenText(config.eos_token);
    this.bosToken = tokenText(config.bos_token);
    this.eosTokenId = this.eosToken === null ? null : this.tokenToId(this.eosToken);
    const decoder = (tokenizerJson as { decoder?: { type?: string } | null }).decoder;
    this.#byteOf = decoder?.type === "ByteLevel"
      ? new Map(bytesToUnicode().map((ch, b) => [ch, b]))
      : null;
  }

  /** Ids of `text`; special tokens written in the text are recognised as such. */
  encode(text: string, opts: { addSpecial?: boolean } = {}): number[] {
    return this.#hf.encode(text, { add_special_tokens: opts.addSpecial ?? false }).ids;
  }

  /** Text of `ids`; special tokens are kept unless skipSpecial. */
  decode(ids: number[], opts: { skipSpecial?: boolean } = {}): string {
    if (ids.length === 0) return "";
    return this.#hf.decode(ids, { skip_special_tokens: opts.skipSpecial ?? false });
  }

  /** The id of a token's text, or null when it is not in the vocab. */
  tokenToId(token: string): number | null {
    return this.#hf.token_to_id(token) ?? null;
  }

  /** Token `id` alone: its text and bytes (logprobs' token and bytes fields). Cached. */
  tokenPiece(id: number): TokenPiece {
    let piece = this.#pieces.get(id);
    if (piece === undefined) {
      piece = this.#piece(id);
      this.#pieces.set(id, piece);
    }
    return piece;
  }

  #piece(id: number): TokenPiece {
    const text = this.decode([id]);
    const raw = this.#hf.get_added_tokens_decoder().has(id) ? undefined : this.#hf.id_to_token(id);
    if (this.#byteOf !== null && raw !== undefined) {
      const bytes = Array.from(raw, (ch) => this.#byteOf!.get(ch) ?? -1);
      if (!bytes.includes(-1)) return { text, bytes };
    }
    return { text, bytes: [...utf8.encode(text)] };
  }

  /** A fresh incremental decoder for one generated sequence. */
  streamDecoder(opts: { skipSpecial?: boolean } = {}): StreamDecoder {
    return new StreamDecoder((ids) => this.decode(ids, opts));
  }
}

/**
 * Turns ids arriving one at a time into text, emitting only complete characters: a token that
 * ends in the middle of a multi-byte UTF-8 character is held until the bytes that finish it come.
 * It decodes a short window (prefix..end) and emits what the newest ids added, as Hugging Face
 * text-generation-inference does, so byte-level merges and spaces decode as in a full decode.
 */
export class StreamDecoder {
  #ids: number[] = [];
  #prefix = 0;
  #read = 0;
  readonly #decode: (ids: number[]) => string;

  constructor(decode: (ids: number[]) => string) {
    this.#decode = decode;
  }

  /** Adds one id; returns the text it completes ("" while a character is still incomplete). */
  push(id: number): string {
    this.#ids.push(id);
    const before = this.#decode(this.#ids.slice(this.#prefix, this.#read));
    const after = this.#decode(this.#ids.slice(this.#prefix));
    if (after.length > before.length && !after.endsWith(REPLACEMENT_CHAR)) {
      this.#prefix = this.#read;
      this.#read = this.#ids.length;
      return after.slice(before.length);
    }
    return "";
  }

  /** Text still held at the end of the sequence (an unfinished character decodes as U+FFFD). */
  flush(): string {
    const before = this.#decode(this.#ids.slice(this.#prefix, this.#read));
    const after = this.#decode(this.#ids.slice(this.#prefix));
    this.#prefix = this.#read = this.#ids.length;
    return after.slice(before.length);
  }
}

function tokenText(t: TokenizerConfig["eos_token"]): string | null {
  if (t === undefined || t === null) return null;
  return typeof t === "string" ? t : t.content;
}

async function readJson(path: string): Promise<unknown> {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (e) {
    throw new TokenizerFileError(
      `cannot read ${path} (${(e as Error).message}); a model directory needs tokenizer.json and ` +
        `tokenizer_config.json (writeByteTokenizer() writes both for fixtures)`,
    );
  }
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new TokenizerFileError(`${path} is not valid JSON (${(e as Error).message})`);
  }
}

/** Loads dir/tokenizer.json and dir/tokenizer_config.json. */
export async function loadTokenizer(dir: string): Promise<Tokenizer> {
  const json = await readJson(join(dir, "tokenizer.json")) as object;
  const config = await readJson(join(dir, "tokenizer_config.json")) as TokenizerConfig;
  return new Tokenizer(json, config);
}

/** GPT-2's byte -> printable character table used by byte-level BPE vocabularies. */
export function bytesToUnicode(): string[] {
  const printable: number[] = [];
  const range = (a: number, b: number) => {
    for (let i = a; i <= b; i++) printable.push(i);
  };
  range(0x21, 0x7e);
  range(0xa1, 0xac);
  range(0xae, 0xff);
  const table = new Array<string>(BYTE_TOKENS);
  let extra = 0;
  for (let b = 0; b < BYTE_TOKENS; b++) {
    table[b] = String.fromCodePoint(printable.includes(b) ? b : BYTE_TOKENS + extra++);
  }
  return table;
}

/** A Qwen-style ChatML template (system/user/assistant turns, generation prompt). */
export const QWEN_CHAT_TEMPLATE = "{%- for message in messages %}" +
  "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}" +
  "{%- endfor %}" +
  "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}";

/** The `model` section of a tokenizer.json for byte-level BPE (as Qwen's tokenizer.json has it). */
export function bpeModel(vocab: Record<string, number>, merges: string[] | [string, string][]) {
  return {
    type: "BPE",
    dropout: null,
    unk_token: null,
    continuing_subword_prefix: "",
    end_of_word_suffix: "",
    fuse_unk: false,
    byte_fallback: false,
    ignore_merges: false,
    vocab,
    merges,
  };
}

/**
 * Writes dir/tokenizer.json (byte-level BPE: ids 0..255 are the bytes, no merges, then
 * <|endoftext|>, <|im_start|>, <|im_end|> at 256..258) and dir/tokenizer_config.json (ChatML
 * template, eos <|im_end|>), so a fixture with vocabSize >= 259 can be served.
 */
export async function writeByteTokenizer(dir: string, vocabSize: number): Promise<void> {
  const needed = BYTE_TOKENS + QWEN_SPECIAL_TOKENS.length;
  if (vocabSize < needed) {
    throw new VocabTooSmallError(
      `vocab size ${vocabSize} cannot hold ${BYTE_TOKENS} byte tokens and ` +
        `${QWEN_SPECIAL_TOKENS.length} special tokens; use a vocab of at least ${needed}`,
    );
  }
  const vocab: Record<string, number> = {};
  bytesToUnicode().forEach((ch, id) => vocab[ch] = id);
  const added = QWEN_SPECIAL_TOKENS.map((content, i) => ({
    id: BYTE_TOKENS + i,
    content,
    single_word: false,
    lstrip: false,
    rstrip: false,
    normalized: false,
    special: true,
  }));
  const byteLevel = {
    type: "ByteLevel",
    add_prefix_space: false,
    trim_offsets: false,
    use_regex: true,
  };
  const tokenizerJson = {
    version: "1.0",
    truncation: null,
    padding: null,
    added_tokens: added,
    normalizer: null,
    pre_tokenizer: byteLevel,
    post_processor: byteLevel,
    decoder: byteLevel,
    model: bpeModel(vocab, []),
  };
  const config: TokenizerConfig = {
    add_bos_token: false,
    bos_token: null,
    eos_token: "<|im_end|>",
    pad_token: "<|endoftext|>",
    clean_up_tokenization_spaces: false,
    tokenizer_class: "Qwen2Tokenizer",
    chat_template: QWEN_CHAT_TEMPLATE,
  };
  await Deno.mkdir(dir, { recursive: true });
  await Deno.writeTextFile(join(dir, "tokenizer.json"), JSON.stringify(tokenizerJson));
  await Deno.writeTextFile(join(dir, "tokenizer_config.json"), JSON.stringify(config, null, 2));
}
