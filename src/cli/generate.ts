/**
 * `main.ts generate [--model DIR] --ids 3,17,42 --max-tokens 16 --temperature 0 [--json]`
 * prints {"ids":[...generated ids...],"stats":{...}} with --json (else the ids comma-separated);
 * `--prompt TEXT` (a model dir with tokenizer.json) streams the generated text to stdout.
 * Generation stops after --max-tokens or at an end-of-sequence id (config.json's eos_token_id
 * and the tokenizer's eos; the EOS id is included in --ids output, as in Hugging Face's
 * generate()). Sampling (on the GPU): --temperature, --top-p, --top-k, --min-p,
 * --repetition-penalty, --presence-penalty, --frequency-penalty, --seed. --steps-per-readback N
 * fixes the decode steps per GPU readback (default: adaptive; 1 = one readback per token).
 *
 * The JSON stats cover the decode steps (the prefill and the first token excluded): tokens they
 * sampled, GPU readbacks, command submissions, wall-clock milliseconds, expert loads.
 */
import { type Flags, numberFlag, parseFlags, parseIds, UsageError } from "./args.ts";
import { DEFAULT_MAX_CONTEXT } from "../gpu/model.ts";
import { openRuntime, RUNTIME_BOOLEAN_FLAGS, RUNTIME_STRING_FLAGS } from "./runtime.ts";
import { generate, type GenerationResult } from "../generate.ts";
import { GREEDY, type SamplingParams } from "../sampling.ts";
import { loadTokenizer, StreamDecoder, type Tokenizer } from "../tokenizer.ts";
import { writeStdout } from "./stdout.ts";

export async function generateCommand(argv: string[]): Promise<number> {
  const flags = parseFlags(
    argv,
    [
      ...RUNTIME_STRING_FLAGS,
      "ids",
      "prompt",
      "max-tokens",
      "temperature",
      "top-p",
      "top-k",
      "min-p",
      "repetition-penalty",
      "presence-penalty",
      "frequency-penalty",
      "seed",
    ],
    ["json", ...RUNTIME_BOOLEAN_FLAGS],
  );
  const maxTokens = numberFlag(flags, "max-tokens", 16, (n) => Number.isInteger(n) && n >= 1);
  const sampling = samplingFlags(flags);
  if ((flags.prompt === undefined) === (flags.ids === undefined)) {
    throw new UsageError("give exactly one of --ids and --prompt");
  }
  const rt = await openRuntime(flags, DEFAULT_MAX_CONTEXT);
  try {
    let tokenizer: Tokenizer | null = null;
    let ids: number[];
    if (typeof flags.prompt === "string") {
      tokenizer = await loadTokenizer(rt.opened.dir);
      ids = tokenizer.encode(flags.prompt);
      if (ids.length === 0) throw new UsageError("--prompt encodes to no tokens");
    } else {
      ids = parseIds(flags.ids);
    }
    const need = ids.length + maxTokens;
    if (need > rt.model.maxContext) {
      throw new UsageError(
        `prompt (${ids.length}) + --max-tokens (${maxTokens}) exceed the context of ` +
          `${rt.model.maxContext}; pass --max-context ${need}`,
      );
    }
    const eos = new Set(rt.model.config.eosTokenIds);
    if (tokenizer?.eosTokenId != null) eos.add(tokenizer.eosTokenId);
    const session = rt.model.newSession();
    const out: number[] = [];
    let result: GenerationResult;
    try {
      const run = generate(session, {
        promptIds: ids,
        maxTokens,
        sampling,
        eosIds: eos,
        // --ids needs no text: a decoder that yields none
        decoder: tokenizer?.streamDecoder({ skipSpecial: true }) ?? new StreamDecoder(() => ""),
      });
      for (;;) {
        const step = await run.next();
        if (step.done) {
          result = step.value;
          break;
        }
        out.push(step.value.token);
        if (tokenizer) await writeStdout(step.value.text);
      }
    } finally {
      session.free();
    }
    if (tokenizer) await writeStdout("\n");
    else if (flags.json) console.log(JSON.stringify({ ids: out, stats: result.stats }));
    else console.log(out.join(","));
    return 0;
  } finally {
    rt.close();
  }
}

function samplingFlags(flags: Flags): SamplingParams {
  const seed = flags.seed === undefined
    ? undefined
    : numberFlag(flags, "seed", 0, (n) => Number.isSafeInteger(n));
  return {
    ...GREEDY,
    temperature: numberFlag(flags, "temperature", 0, (n) => n >= 0 && n < Infinity),
    topP: numberFlag(flags, "top-p", 1, (n) => n > 0 && n <= 1),
    topK: numberFlag(flags, "top-k", 0, (n) => Number.isInteger(n) && n >= 0),
    minP: numberFlag(flags, "min-p", 0, (n) => n >= 0 && n <= 1),
    repetitionPenalty: numberFlag(flags, "repetition-penalty", 1, (n) => n > 0 && n < Infinity),
    presencePenalty: numberFlag(flags, "presence-penalty", 0, (n) => Math.abs(n) <= 2),
    frequencyPenalty: numberFlag(flags, "frequency-penalty", 0, (n) => Math.abs(n) <= 2),
    seed,
  };
}
