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
import {
  type CommandSpec,
  type Flags,
  intFlag,
  numberFlag,
  parseFlags,
  parseIds,
  UsageError,
} from "./args.ts";
import { DEFAULT_MAX_CONTEXT } from "../gpu/model.ts";
import { openRuntime, RUNTIME_FLAGS, runtimeOptions } from "./runtime.ts";
import { generate, type GenerationResult } from "../generate.ts";
import { GREEDY, type SamplingParams } from "../sampling.ts";
import { loadTokenizer, StreamDecoder, type Tokenizer } from "../tokenizer.ts";
import { writeStdout } from "./stdout.ts";

export const GENERATE_SPEC: CommandSpec = {
  name: "generate",
  summary: "generates from token ids (--json: ids and stats) or from text (streams the text)",
  usage: "[--model DIR] (--ids 3,17,42 | --prompt TEXT) [--max-tokens N] [flags]",
  flags: [
    { name: "ids", arg: "IDS", help: "prompt token ids, comma-separated decimal integers" },
    { name: "prompt", arg: "TEXT", help: "prompt text (needs tokenizer.json in the model dir)" },
    { name: "max-tokens", arg: "N", help: "most tokens to generate (16)" },
    { name: "json", help: 'print {"ids":[...],"stats":{...}} (with --ids)' },
    { name: "temperature", arg: "T", help: "sampling temperature, 0 = greedy (0)" },
    { name: "top-p", arg: "P", help: "nucleus sampling mass, (0, 1] (1)" },
    { name: "top-k", arg: "K", help: "sample among the K most likely, 0 = all (0)" },
    { name: "min-p", arg: "P", help: "drop tokens below P x the top probability, [0, 1] (0)" },
    { name: "repetition-penalty", arg: "R", help: "divide repeated tokens' logits by R (1)" },
    {
      name: "presence-penalty",
      arg: "A",
      help: "subtract A from seen tokens' logits, |A| <= 2 (0)",
    },
    {
      name: "frequency-penalty",
      arg: "A",
      help: "subtract A x count from seen tokens' logits, |A| <= 2 (0)",
    },
    { name: "seed", arg: "S", help: "sampling seed, a non-negative integer (random)" },
    ...RUNTIME_FLAGS,
  ],
};

export async function generateCommand(argv: string[]): Promise<number> {
  const flags = parseFlags(argv, GENERATE_SPEC);
  // every flag is checked before the model loads
  const maxTokens = intFlag(flags, "max-tokens", 16, 1);
  const sampling = samplingFlags(flags);
  if ((flags.prompt === undefined) === (flags.ids === undefined)) {
    throw new UsageError("give exactly one of --ids and --prompt");
  }
  const givenIds = flags.ids === undefined ? null : parseIds(flags.ids);
  if (typeof flags.prompt === "string" && flags.prompt === "") {
    throw new UsageError("--prompt is empty");
  }
  runtimeOptions(flags, DEFAULT_MAX_CONTEXT);
  const rt = await openRuntime(flags, DEFAULT_MAX_CONTEXT);
  try {
    let tokenizer: Tokenizer | null = null;
    let ids: number[];
    if (typeof flags.prompt === "string") {
      tokenizer = await loadTokenizer(rt.opened.dir);
      ids = tokenizer.encode(flags.prompt);
      if (ids.length === 0) throw new UsageError("--prompt encodes to no tokens");
    } else {
      ids = checkVocab(givenIds!, rt.model.config.vocabSize);
    }
    const need = ids.length + maxTokens;
    if (need > rt.model.maxContext) {
      const modelMax = rt.model.config.maxPositionEmbeddings;
      // advice that works: a longer --max-context only up to the model's own maximum
      const advice = need <= modelMax
        ? `pass --max-context ${need}`
        : `the model's maximum is ${modelMax} positions: lower --max-tokens to at most ` +
          `${modelMax - ids.length} or shorten the prompt`;
      throw new UsageError(
        `prompt (${ids.length}) + --max-tokens (${maxTokens}) exceed the context of ` +
          `${rt.model.maxContext}; ${advice}`,
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

/** The ids, if every one is below the model's vocab size; else a UsageError naming the first. */
export function checkVocab(ids: number[], vocab: number): number[] {
  const bad = ids.find((id) => id >= vocab);
  if (bad !== undefined) {
    throw new UsageError(`--ids: token id ${bad} is outside the model's vocab (0..${vocab - 1})`);
  }
  return ids;
}

function samplingFlags(flags: Flags): SamplingParams {
  const seed = flags.seed === undefined ? undefined : intFlag(flags, "seed", 0, 0);
  return {
    ...GREEDY,
    temperature: numberFlag(flags, "temperature", 0, (n) => n >= 0),
    topP: numberFlag(flags, "top-p", 1, (n) => n > 0 && n <= 1),
    topK: intFlag(flags, "top-k", 0, 0),
    minP: numberFlag(flags, "min-p", 0, (n) => n >= 0 && n <= 1),
    repetitionPenalty: numberFlag(flags, "repetition-penalty", 1, (n) => n > 0),
    presencePenalty: numberFlag(flags, "presence-penalty", 0, (n) => Math.abs(n) <= 2),
    frequencyPenalty: numberFlag(flags, "frequency-penalty", 0, (n) => Math.abs(n) <= 2),
    seed,
  };
}
