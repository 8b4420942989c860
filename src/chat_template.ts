/**
 * Renders a model's chat template (tokenizer_config.json's `chat_template`, Jinja) into the prompt
 * text, with npm `@huggingface/jinja`, as transformers' apply_chat_template does.
 */
import { Template } from "@huggingface/jinja";
import type { TokenizerConfig } from "./tokenizer.ts";

/** One chat turn, content already flattened to text. */
export interface ChatMessage {
  role: string;
  content: string;
}

/** tokenizer_config.json has no usable chat_template. */
export class MissingChatTemplateError extends Error {
  override name = "MissingChatTemplateError";
}

/** The template failed to parse or raised while rendering (e.g. raise_exception on bad roles). */
export class ChatTemplateError extends Error {
  override name = "ChatTemplateError";
}

/** A compiled chat template. */
export class ChatTemplate {
  readonly #template: Template;
  readonly #bos: string | null;
  readonly #eos: string | null;

  constructor(source: string, specials: { bosToken?: string | null; eosToken?: string | null }) {
    try {
      this.#template = new Template(source);
    } catch (e) {
      throw new ChatTemplateError(`chat_template does not parse: ${(e as Error).message}`);
    }
    this.#bos = specials.bosToken ?? null;
    this.#eos = specials.eosToken ?? null;
  }

  /** The prompt text for `messages`, ending with the assistant generation prompt. */
  render(messages: ChatMessage[], extra: Record<string, unknown> = {}): string {
    try {
      return this.#template.render({
        ...extra,
        messages,
        add_generation_prompt: true,
        bos_token: this.#bos ?? "",
        eos_token: this.#eos ?? "",
      });
    } catch (e) {
      throw new ChatTemplateError(`chat_template failed to render: ${(e as Error).message}`);
    }
  }
}

/** The template named "default" (or the only string) in tokenizer_config.json. */
export function chatTemplateFromConfig(
  config: TokenizerConfig,
  specials: { bosToken?: string | null; eosToken?: string | null },
): ChatTemplate {
  const t = config.chat_template;
  let source: string | undefined;
  if (typeof t === "string") source = t;
  else if (Array.isArray(t)) source = t.find((x) => x.name === "default")?.template;
  if (!source) {
    throw new MissingChatTemplateError(
      "tokenizer_config.json has no chat_template; add one (writeByteTokenizer() writes a " +
        "ChatML template) or use /v1/completions with a raw prompt",
    );
  }
  return new ChatTemplate(source, specials);
}
