/**
 * Serving many users, through the real server: two `main.ts serve` subprocesses of the embedded
 * default model (the engine in its worker, adaptive steps per readback, default context), one
 * with serve's default --max-batch 16 (continuous batching) and one with --max-batch 1 (no
 * batching: requests wait FIFO and decode one at a time, the old behaviour: the baseline). One
 * run measures:
 *
 * 1. 1, 4, 8 and 16 streamed chat completions at once on the batching server (distinct short
 *    prompts, temperature 0.7, distinct seeds, --tokens each): aggregate tokens/s, time to first
 *    token (median, p95), mean batch (sequence-steps / decode steps) and GPU readbacks per token
 *    (the 1-stream level: 4 requests one after another per run);
 * 2. 8 at once on the --max-batch 1 server, in the same rounds, so the ratio batching / none is
 *    measured under the same load;
 * 3. a 4-turn chat after a long system message (temperature 0): time to first token of each turn
 *    with prompt-prefix reuse, and without it (every KV slab overwritten before each turn); the
 *    replies must be identical both ways (exit code 1 otherwise);
 * 4. GET /health latency (asked every ~20 ms) during the 4-at-once runs.
 *
 * Prints one table, the chat table and the goals; writes bench/out/server.json.
 *
 *   ./bin/deno task bench:server [--reps N] [--tokens N] [--chat-reps N]
 */
import { parseArgs } from "node:util";
import { median } from "./memcpy.ts";
import { getJson, SERVE_ARGS, sleep, sseEvents, startServe } from "./serve_process.ts";

const OUT_FILE = new URL("./out/server.json", import.meta.url).pathname;

/** Streams at once on the batching server; each level is warmed up once before the rounds. */
const LEVELS = [1, 4, 8, 16];
/** Requests one after another in a run of the 1-stream level: a reply that meets EOS early
 * ends with the rest of its readback batch computed for nothing, so one reply's tokens/s swings
 * with its length; several per run average that out as the other levels' many streams do. */
const SINGLE_STREAM_REQUESTS = 4;
/** Streams at once on the --max-batch 1 server (the baseline). */
const BASELINE_LEVEL = 8;
/** The level whose runs /health is polled during. */
const HEALTH_LEVEL = 4;
/** serve's own default (src/server/cli.ts), passed explicitly so the table says what ran. */
const BATCHING_MAX_BATCH = 16;
/** Rounds (--reps): each runs every level once, in order, then the baseline. */
const DEFAULT_REPS = 3;
/** Tokens per streamed reply (--tokens). */
const DEFAULT_TOKENS = 64;
const TEMPERATURE = 0.7;
/** Tokens of each warm-up reply (pipelines, the level's KV slab groups made on first use). */
const WARMUP_TOKENS = 16;
/** Chat: turns, reply length, and how many times the pair (with reuse, without) runs. */
const CHAT_TURNS = 4;
const CHAT_REPLY_TOKENS = 48;
const DEFAULT_CHAT_REPS = 2;
/** Pause between /health requests while generations run. */
const HEALTH_POLL_MS = 20;
/** Wait after a run before reading /stats: counters of the readback in flight settle. */
const STATS_SETTLE_MS = 200;
/** Percentile of time to first token reported beside the median. */
const TTFT_PERCENTILE = 95;
/** First token ids of the slab-overwriting completions: ordinary vocabulary ids, none of them
 * 4094 (<|im_start|>, the first token of every chat prompt), one fresh id per request. */
const FLUSH_FIRST_ID = 100;
const FLUSH_PROMPT_TOKENS = 4;

/** The goals. */
const GOALS = {
  /** aggregate tok/s at 8 streams / at 1 stream (batching server). */
  speedup8: 4,
  /** median TTFT at 8 streams / at 1 stream (batching server). */
  ttft8: 3,
  /** TTFT of the chat's second turn / its first turn, with prefix reuse. */
  secondTurn: 0.3,
};

/** Short prompts: request k gets FORMS[k % F] of SUBJECTS[k / F], all distinct in a run. */
const FORMS = [
  (s: string) => `Tell me about ${s}.`,
  (s: string) => `Write a short story about ${s}.`,
  (s: string) => `What do you know of ${s}?`,
  (s: string) => `Describe ${s} in a few words.`,
  (s: string) => `Why do people care about ${s}?`,
  (s: string) => `Explain ${s} to a child.`,
];
// deno-fmt-ignore
const SUBJECTS = [
  "the sea", "a king", "a hacker", "Moses", "the moon", "a farmer", "the river", "an old ship",
  "the desert", "a small dog", "the winter", "a lost key", "the mountain", "a painter", "the city",
  "a storm", "the library", "a clock", "the forest", "a bridge", "the garden", "a letter",
  "the kitchen", "a train", "the island", "a teacher", "the market", "a lamp", "the harbour",
  "a compiler", "the printer", "a kernel",
];

/** The chat's first message: a long system message (a manual excerpt), so the first turn has a
 * prompt worth caching, as a real assistant's instructions or a pasted document do. */
const SYSTEM_MESSAGE = [
  "You are the help desk of a small municipal library that also lends tools, seeds and musical",
  "instruments. Answer questions from visitors politely and briefly, and always prefer the rules",
  "below to anything you believe from elsewhere.",
  "Opening hours. The library opens at nine in the morning from Monday to Friday and closes at",
  "seven in the evening, except on Wednesdays, when it closes at noon so that the staff can repair",
  "books and check returned tools. On Saturdays it opens at ten and closes at four. It is closed",
  "on Sundays and on public holidays, and during the first week of August for the annual",
  "inventory. The reading room upstairs keeps the same hours, but the last visitor may enter it",
  "half an hour before closing.",
  "Membership. Anyone who lives, works or studies in the town may become a member for free. A new",
  "member shows an identity document and a proof of address, such as a recent letter or a rent",
  "contract, and receives a card on the same day. Children under twelve need the signature of a",
  "parent or guardian. Members who move away keep their card until it expires, after two years,",
  "and may renew it once by post. A lost card is replaced for a small fee; the old card is",
  "blocked at once, so that nobody else can borrow on it.",
  "Loans. A member may borrow up to ten books, four films and two tools at the same time. Books",
  "and films are lent for three weeks, tools for one week, and musical instruments for two weeks.",
  "A loan may be renewed twice, at the desk, by telephone or on the web site, unless another",
  "member has reserved the item. Reservations are free; the member is told by letter or by",
  "message when the item is waiting, and it is kept for five opening days. Late returns cost ten",
  "cents a day for books and one euro a day for tools and instruments, up to the price of the",
  "item. Damaged items are repaired by the staff when possible; the member pays for the parts.",
  "Tools. The tool shelf holds drills, saws, ladders, a lawn mower, a sewing machine, a pressure",
  "washer and a set of garden tools. Every tool is checked when it comes back: blades are",
  "sharpened, batteries charged and cables tested. A member borrowing a tool for the first time",
  "signs a short safety note and may ask for a demonstration. Ladders and the pressure washer",
  "are lent only to adults. Tools must be returned clean; a muddy spade is cleaned by the staff",
  "for a fee of two euros.",
  "Seeds. The seed library lends packets of vegetable, herb and flower seeds in spring and",
  "summer. A member takes up to five packets a season and is asked, but not required, to bring",
  "back seeds from the plants at the end of the season, dried and labelled with the name of the",
  "plant and the year. The staff test the returned seeds before lending them again.",
  "Instruments. The library lends guitars, violins, a cello, keyboards, flutes and drums, each",
  "with its case and a short method book. Members under sixteen borrow instruments with the",
  "signature of a parent or guardian. Strings and reeds are replaced by the staff free of charge;",
  "a broken instrument is never to be repaired at home.",
  "Rooms. Two meeting rooms may be booked free of charge by members for study groups, clubs and",
  "associations, for up to three hours at a time and up to twice a week. Bookings are made at the",
  "desk or on the web site at most four weeks ahead. Food is not allowed in the rooms; water is.",
  "Computers. Six computers and a printer are available in the reading room. A session lasts one",
  "hour and may be extended when nobody is waiting. Printing costs ten cents a page in black and",
  "white and fifty cents in colour. The wireless network is open to everyone during opening hours.",
  "Answer in two or three sentences, and say so when the rules above do not cover a question.",
].join(" ");
const CHAT_USER_TURNS = [
  "Can I borrow a drill this Wednesday afternoon?",
  "How many books may my daughter borrow, and for how long?",
  "What happens if I bring the lawn mower back three days late?",
  "Can my club meet in a room every Monday evening?",
];

/** Nearest-rank percentile (p in 0..100) of xs. */
function percentile(xs: number[], p: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.max(0, Math.ceil((p / 100) * s.length) - 1)];
}

function loadAvg(): number[] {
  return Deno.readTextFileSync("/proc/loadavg").split(" ").slice(0, 3).map(Number);
}

// ---- the servers ----

interface Server {
  maxBatch: number;
  url: string;
  modelId: string;
  /** Sequences decoded together (KV slabs), from /stats: --max-batch, or fewer. */
  kvSequences: number;
  /** main.ts serve's own line about the model it opened (context, sequences, adapter). */
  openedLine: string;
  readyS: number;
  stop(): Promise<void>;
}

/** Starts `main.ts serve --max-batch N` and reads what it opened. */
async function startServer(maxBatch: number): Promise<Server> {
  const p = await startServe(["--max-batch", String(maxBatch)]);
  try {
    const kvSequences = (await counters(p.url)).kvSequences;
    const openedLine =
      /model .*sequences at once.*$/m.exec(p.log())?.[0].replace(/^model \S+: /, "") ?? "?";
    return { maxBatch, kvSequences, openedLine, ...p };
  } catch (e) {
    await p.stop();
    throw e;
  }
}

/** The engine's counters this bench reads, from GET /stats. */
const COUNTERS = [
  "gpuSteps",
  "gpuReadbacks",
  "gpuDecodeSteps",
  "gpuSequenceSteps",
  "prefixCachedTokens",
  "prefixCacheHits",
  "kvSequences",
] as const;
type Counters = Record<typeof COUNTERS[number], number>;

async function counters(url: string): Promise<Counters> {
  const s = await getJson(`${url}/stats`);
  const cache = (s?.body as { cache?: Record<string, number> })?.cache ?? {};
  const missing = COUNTERS.filter((k) => typeof cache[k] !== "number");
  if (missing.length) throw new Error(`/stats has no ${missing.join(", ")}`);
  return Object.fromEntries(COUNTERS.map((k) => [k, cache[k]])) as Counters;
}

function delta(before: Counters, after: Counters): Counters {
  return Object.fromEntries(COUNTERS.map((k) => [k, after[k] - before[k]])) as Counters;
}

// ---- one streamed request ----

interface Reply {
  /** From sending the request to the first piece of text. */
  ttftMs: number;
  ms: number;
  promptTokens: number;
  tokens: number;
  text: string;
}

/** POSTs a streamed request to path (chat or completions) and reads its events to the end. */
async function stream(url: string, path: string, body: Record<string, unknown>): Promise<Reply> {
  const t0 = performance.now();
  const res = await fetch(`${url}${path}`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ ...body, stream: true, stream_options: { include_usage: true } }),
  });
  const reply: Reply = { ttftMs: NaN, ms: 0, promptTokens: 0, tokens: 0, text: "" };
  for await (const data of sseEvents(res, path)) {
    if (data.usage) {
      reply.promptTokens = data.usage.prompt_tokens;
      reply.tokens = data.usage.completion_tokens;
    }
    const piece = data.choices?.[0]?.delta?.content ?? data.choices?.[0]?.text ?? "";
    if (piece && Number.isNaN(reply.ttftMs)) reply.ttftMs = performance.now() - t0;
    reply.text += piece;
  }
  if (reply.tokens === 0) throw new Error(`${path}: the stream ended without tokens or usage`);
  reply.ms = performance.now() - t0;
  return reply;
}

type Message = { role: string; content: string };

function chatBody(
  s: Server,
  messages: Message[],
  maxTokens: number,
  temperature: number,
  seed = 0,
) {
  return { model: s.modelId, messages, max_tokens: maxTokens, temperature, seed };
}

// ---- concurrent streams ----

/** Request counter: each request of the run gets its own prompt and seed. */
let requestIndex = 0;

function shortPrompt(k: number): string {
  const form = FORMS[k % FORMS.length];
  return form(SUBJECTS[Math.floor(k / FORMS.length) % SUBJECTS.length]);
}

/** n streamed chats at once, each with a fresh short prompt and seed. */
async function streams(s: Server, n: number, maxTokens: number) {
  const t0 = performance.now();
  const replies = await Promise.all(Array.from({ length: n }, () => {
    const k = requestIndex++;
    const messages = [{ role: "user", content: shortPrompt(k) }];
    return stream(s.url, "/v1/chat/completions", chatBody(s, messages, maxTokens, TEMPERATURE, k));
  }));
  return { replies, wallS: (performance.now() - t0) / 1000 };
}

interface LevelRun {
  requests: number;
  wallS: number;
  tokens: number;
  tokensPerS: number;
  ttftMs: number[];
  counters: Counters;
}

/** One timed run of n streams at once (n = 1: SINGLE_STREAM_REQUESTS one after another), with
 * the engine's counters over it. */
async function timedRun(s: Server, n: number, maxTokens: number): Promise<LevelRun> {
  const before = await counters(s.url);
  const replies: Reply[] = [];
  let wallS = 0;
  for (let i = 0; i < (n === 1 ? SINGLE_STREAM_REQUESTS : 1); i++) {
    const r = await streams(s, n, maxTokens);
    replies.push(...r.replies);
    wallS += r.wallS;
  }
  await sleep(STATS_SETTLE_MS);
  const tokens = replies.reduce((t, r) => t + r.tokens, 0);
  return {
    requests: replies.length,
    wallS,
    tokens,
    tokensPerS: tokens / wallS,
    ttftMs: replies.map((r) => r.ttftMs),
    counters: delta(before, await counters(s.url)),
  };
}

/** Runs fn while GET /health is asked every HEALTH_POLL_MS; latencies go into `into`. */
async function withHealthPolls<T>(url: string, into: number[], fn: () => Promise<T>): Promise<T> {
  let running = true;
  const polling = (async () => {
    while (running) {
      const t0 = performance.now();
      const res = await fetch(`${url}/health`);
      await res.arrayBuffer();
      if (res.status !== 200) throw new Error(`/health answered ${res.status}`);
      into.push(performance.now() - t0);
      await sleep(HEALTH_POLL_MS);
    }
  })();
  try {
    return await fn();
  } finally {
    running = false;
    await polling;
  }
}

/** The figures of one (server, level) row, over its runs. */
function summarize(server: Server, streams: number, runs: LevelRun[]) {
  const sum = (f: (r: LevelRun) => number) => runs.reduce((t, r) => t + f(r), 0);
  const ttft = runs.flatMap((r) => r.ttftMs);
  return {
    maxBatch: server.maxBatch,
    kvSequences: server.kvSequences,
    streams,
    runs,
    tokensPerS: median(runs.map((r) => r.tokensPerS)),
    ttftMedianMs: median(ttft),
    ttftP95Ms: percentile(ttft, TTFT_PERCENTILE),
    meanBatch: sum((r) => r.counters.gpuSequenceSteps) / sum((r) => r.counters.gpuDecodeSteps),
    readbacksPerToken: sum((r) => r.counters.gpuReadbacks) / sum((r) => r.tokens),
    tokensPerRequest: sum((r) => r.tokens) / sum((r) => r.requests),
    cachedPerRequest: sum((r) => r.counters.prefixCachedTokens) / sum((r) => r.requests),
  };
}
type Row = ReturnType<typeof summarize>;

// ---- the chat: prefix reuse ----

/** Slab-overwriting completions sent so far (each prompt starts with a fresh id). */
let flushed = 0;

/**
 * Overwrites the cached tokens of every KV slab: one short completion per slab, each prompt of
 * token ids starting with an id that no cached sequence starts with. Every free slab then shares
 * no prefix with it, so the pool takes the one released longest ago (src/gpu/kv_pool.ts), and
 * kvSequences of them replace every slab's cache, whether they overlap or not.
 */
async function flushSlabs(s: Server): Promise<void> {
  await Promise.all(Array.from({ length: s.kvSequences }, () => {
    const first = FLUSH_FIRST_ID + flushed++;
    const prompt = Array.from({ length: FLUSH_PROMPT_TOKENS }, (_, i) => first + i * 7);
    return stream(s.url, "/v1/completions", {
      model: s.modelId,
      prompt,
      max_tokens: 1,
      temperature: 0,
    });
  }));
}

interface Turn {
  promptTokens: number;
  /** Prompt tokens found cached in a slab (the engine's prefixCachedTokens over the turn). */
  cachedTokens: number;
  ttftMs: number;
  tokens: number;
  reply: string;
}

/**
 * The CHAT_TURNS-turn chat at temperature 0, each turn's prompt the whole conversation so far.
 * reuse: the slabs are overwritten once before the first turn (a cold start), so each later turn
 * finds the previous one cached; no reuse: overwritten before every turn.
 */
async function chat(s: Server, reuse: boolean): Promise<Turn[]> {
  const messages: Message[] = [{ role: "system", content: SYSTEM_MESSAGE }];
  const turns: Turn[] = [];
  for (let t = 0; t < CHAT_TURNS; t++) {
    if (!reuse || t === 0) await flushSlabs(s);
    await sleep(STATS_SETTLE_MS);
    const before = await counters(s.url);
    messages.push({ role: "user", content: CHAT_USER_TURNS[t] });
    const r = await stream(
      s.url,
      "/v1/chat/completions",
      chatBody(s, messages, CHAT_REPLY_TOKENS, 0),
    );
    await sleep(STATS_SETTLE_MS);
    const cachedTokens = delta(before, await counters(s.url)).prefixCachedTokens;
    turns.push({
      promptTokens: r.promptTokens,
      cachedTokens,
      ttftMs: r.ttftMs,
      tokens: r.tokens,
      reply: r.text,
    });
    messages.push({ role: "assistant", content: r.text });
  }
  return turns;
}

// ---- printing ----

/** Columns padded to their widest cell: the first left-aligned, the others right-aligned. */
function table(rows: string[][]): string {
  const widths = rows[0].map((_, c) => Math.max(...rows.map((r) => r[c].length)));
  return rows.map((r) =>
    r.map((cell, c) => c === 0 ? cell.padEnd(widths[c]) : cell.padStart(widths[c])).join("  ")
  ).join("\n");
}

async function adapterName(): Promise<string> {
  try {
    const adapter = await navigator.gpu.requestAdapter();
    return adapter?.info.description || adapter?.info.vendor || "none";
  } catch {
    return "unknown";
  }
}

function positiveInt(flag: string, value: string | undefined, fallback: number): number {
  const n = value === undefined ? fallback : Number(value);
  if (!Number.isInteger(n) || n < 1) throw new RangeError(`--${flag}: a positive integer`);
  return n;
}

// ---- the run ----

interface Measured {
  machine: { adapter: string; cpu: string; cores: number; deno: string };
  loadAvgStart: number[];
  loadAvgEnd: number[];
  servers: Server[];
  options: { reps: number; tokens: number; chatReps: number };
  rows: Row[];
  /** /health latencies during the HEALTH_LEVEL runs. */
  health: number[];
  chats: { reuse: Turn[]; none: Turn[] }[];
  seconds: Record<string, number>;
}

/** Starts both servers, warms each level up, runs the rounds and the chats, stops the servers. */
async function measure(options: Measured["options"]): Promise<Measured> {
  const started = performance.now();
  const loadAvgStart = loadAvg();
  const cpu = /^model name\s*:\s*(.*)$/m.exec(Deno.readTextFileSync("/proc/cpuinfo"))?.[1];
  const machine = {
    adapter: await adapterName(),
    cpu: cpu ?? "unknown",
    cores: navigator.hardwareConcurrency,
    deno: Deno.version.deno,
  };
  console.error(`starting main.ts serve --max-batch ${BATCHING_MAX_BATCH} and --max-batch 1`);
  const servers = await Promise.all([startServer(BATCHING_MAX_BATCH), startServer(1)]);
  const [batching, baseline] = servers;
  const health: number[] = [];
  const seconds: Record<string, number> = {};
  const runs = new Map<string, LevelRun[]>();
  const record = (key: string, r: LevelRun) => runs.set(key, [...runs.get(key) ?? [], r]);
  const chats: Measured["chats"] = [];
  try {
    // warm-ups: each level once, untimed
    let t0 = performance.now();
    for (const n of LEVELS) await streams(batching, n, WARMUP_TOKENS);
    await streams(baseline, BASELINE_LEVEL, WARMUP_TOKENS);
    seconds.warmup = (performance.now() - t0) / 1000;

    // rounds: every level once, then the baseline, so load drift touches all of them alike
    t0 = performance.now();
    for (let rep = 1; rep <= options.reps; rep++) {
      for (const n of LEVELS) {
        const run = () => timedRun(batching, n, options.tokens);
        const r = n === HEALTH_LEVEL
          ? await withHealthPolls(batching.url, health, run)
          : await run();
        record(`batching ${n}`, r);
        console.error(`round ${rep}: ${n} at once, ${r.tokensPerS.toFixed(1)} tok/s`);
      }
      const r = await timedRun(baseline, BASELINE_LEVEL, options.tokens);
      record("baseline", r);
      console.error(
        `round ${rep}: ${BASELINE_LEVEL} at once, --max-batch 1, ${r.tokensPerS.toFixed(1)} tok/s`,
      );
    }
    seconds.rounds = (performance.now() - t0) / 1000;

    // the chat, with reuse then without, chatReps times
    t0 = performance.now();
    for (let i = 1; i <= options.chatReps; i++) {
      chats.push({ reuse: await chat(batching, true), none: await chat(batching, false) });
      console.error(`chat ${i}: done`);
    }
    seconds.chat = (performance.now() - t0) / 1000;
  } finally {
    await Promise.all(servers.map((s) => s.stop()));
  }
  seconds.total = (performance.now() - started) / 1000;
  const rows = [
    ...LEVELS.map((n) => summarize(batching, n, runs.get(`batching ${n}`)!)),
    summarize(baseline, BASELINE_LEVEL, runs.get("baseline")!),
  ];
  const loadAvgEnd = loadAvg();
  return { machine, loadAvgStart, loadAvgEnd, servers, options, rows, health, chats, seconds };
}

/** Per turn: prompt and cached tokens, TTFT with reuse and without (median over the runs). */
function chatFigures(chats: Measured["chats"]) {
  const first = chats[0].reuse;
  return first.map((turn, t) => ({
    turn: t + 1,
    promptTokens: turn.promptTokens,
    replyTokens: turn.tokens,
    cachedReuse: chats.map((c) => c.reuse[t].cachedTokens),
    cachedNone: chats.map((c) => c.none[t].cachedTokens),
    ttftReuseMs: median(chats.map((c) => c.reuse[t].ttftMs)),
    ttftNoneMs: median(chats.map((c) => c.none[t].ttftMs)),
    runsReuseMs: chats.map((c) => c.reuse[t].ttftMs),
    runsNoneMs: chats.map((c) => c.none[t].ttftMs),
    identical: chats.every((c) =>
      c.reuse[t].reply === turn.reply && c.none[t].reply === turn.reply
    ),
  }));
}

/** Everything measured, the derived figures and the goals: what is printed and saved. */
function makeReport(m: Measured) {
  const one = m.rows[0];
  const b8 = m.rows[LEVELS.indexOf(BASELINE_LEVEL)];
  const chatRows = chatFigures(m.chats);
  const goal = (name: string, value: number, met: boolean, detail: string) => ({
    name,
    value,
    met,
    detail,
  });
  const secondTurn = chatRows[1].ttftReuseMs / chatRows[0].ttftReuseMs;
  const speedup = b8.tokensPerS / one.tokensPerS;
  const ttft = b8.ttftMedianMs / one.ttftMedianMs;
  return {
    date: new Date().toISOString(),
    machine: { ...m.machine, loadAvgStart: m.loadAvgStart, loadAvgEnd: m.loadAvgEnd },
    servers: m.servers.map(({ stop: _, ...s }) => ({
      ...s,
      command: `bin/deno ${SERVE_ARGS.join(" ")} serve --port P --max-batch ${s.maxBatch}`,
    })),
    options: { ...m.options, temperature: TEMPERATURE, warmupTokens: WARMUP_TOKENS },
    rows: m.rows,
    batchingVsNone: b8.tokensPerS / m.rows[m.rows.length - 1].tokensPerS,
    health: {
      level: HEALTH_LEVEL,
      pollMs: HEALTH_POLL_MS,
      medianMs: median(m.health),
      maxMs: Math.max(...m.health),
      latenciesMs: m.health,
    },
    chat: {
      turns: CHAT_TURNS,
      replyTokens: CHAT_REPLY_TOKENS,
      system: SYSTEM_MESSAGE,
      users: CHAT_USER_TURNS,
      rows: chatRows,
      runs: m.chats,
      identical: chatRows.every((r) => r.identical),
      /** A cold turn (every turn without reuse, the first with) that found cached tokens. */
      coldLeaked: chatRows.some((r) => r.cachedNone.some((n) => n !== 0)) ||
        chatRows[0].cachedReuse.some((n) => n !== 0),
    },
    goals: [
      goal(
        `${BASELINE_LEVEL} concurrent streams >= ${GOALS.speedup8}x the tokens/s of one`,
        speedup,
        speedup >= GOALS.speedup8,
        `${b8.tokensPerS.toFixed(1)} vs ${one.tokensPerS.toFixed(1)} tok/s`,
      ),
      goal(
        `TTFT at ${BASELINE_LEVEL} concurrent <= ${GOALS.ttft8}x the single-stream one`,
        ttft,
        ttft <= GOALS.ttft8,
        `median ${b8.ttftMedianMs.toFixed(1)} vs ${one.ttftMedianMs.toFixed(1)} ms`,
      ),
      goal(
        `second-turn TTFT <= ${GOALS.secondTurn}x the first turn's with reuse`,
        secondTurn,
        secondTurn <= GOALS.secondTurn,
        `${chatRows[1].ttftReuseMs.toFixed(1)} vs ${chatRows[0].ttftReuseMs.toFixed(1)} ms`,
      ),
    ],
    seconds: m.seconds,
  };
}
type Report = ReturnType<typeof makeReport>;

function printReport(r: Report): void {
  const f = (x: number, d = 1) => x.toFixed(d);
  const x = (v: number) => `${v.toFixed(2)}x`;
  const m = r.machine;
  const o = r.options;
  console.log(`machine: ${m.cpu}, ${m.cores} cores, ${m.adapter}, Deno ${m.deno}`);
  console.log(
    `load average (1/5/15 min): ${m.loadAvgStart.join(" ")} at start, ` +
      `${m.loadAvgEnd.join(" ")} at end`,
  );
  for (const s of r.servers) {
    console.log(
      `main.ts serve --max-batch ${s.maxBatch} (subprocess): ${s.openedLine}; ` +
        `/health ok after ${f(s.readyS)} s`,
    );
  }
  console.log(
    `${o.tokens}-token streamed chat completions (temperature ${o.temperature}, distinct seeds and ` +
      `short prompts), ${o.reps} rounds after one untimed run per level`,
  );
  const one = r.rows[0];
  // deno-fmt-ignore
  console.log(table([
    ["server", "streams", "tok/s", "vs 1", "TTFT med ms", `p${TTFT_PERCENTILE} ms`, "vs 1", "mean batch", "rb/tok", "tok/req", "cached/req", "runs tok/s"],
    ...r.rows.map((row) => [
      `--max-batch ${row.maxBatch}`, String(row.streams), f(row.tokensPerS), x(row.tokensPerS / one.tokensPerS),
      f(row.ttftMedianMs), f(row.ttftP95Ms), x(row.ttftMedianMs / one.ttftMedianMs), f(row.meanBatch, 2),
      f(row.readbacksPerToken, 3), f(row.tokensPerRequest), f(row.cachedPerRequest),
      row.runs.map((run) => f(run.tokensPerS)).join(" "),
    ]),
  ]));
  console.log(
    `tok/s: completion tokens of all streams / wall time from the first request to the last ` +
      `[DONE] (1 stream: ${SINGLE_STREAM_REQUESTS} requests one after another, summed), median ` +
      `of ${o.reps} runs; TTFT: request sent -> first text, median and nearest-rank ` +
      `p${TTFT_PERCENTILE} over every request of the runs; mean batch: sequence-steps / decode ` +
      `steps; rb/tok: GPU readbacks / completion tokens; cached/req: prompt tokens found in a KV ` +
      `slab (prefix reuse); engine counters from /stats`,
  );
  const b8 = r.rows[LEVELS.indexOf(BASELINE_LEVEL)];
  const none = r.rows[r.rows.length - 1];
  console.log(
    `batching vs none at ${BASELINE_LEVEL} streams: ${x(r.batchingVsNone)} tok/s ` +
      `(${f(b8.tokensPerS)} vs ${f(none.tokensPerS)}), TTFT median ${f(b8.ttftMedianMs)} vs ` +
      `${f(none.ttftMedianMs)} ms, p${TTFT_PERCENTILE} ${f(b8.ttftP95Ms)} vs ` +
      `${f(none.ttftP95Ms)} ms`,
  );
  const h = r.health;
  console.log(
    `/health during ${h.level} concurrent streams (--max-batch ${BATCHING_MAX_BATCH}): median ` +
      `${f(h.medianMs)} ms, max ${f(h.maxMs)} ms over ${h.latenciesMs.length} GETs ` +
      `(every ~${h.pollMs} ms)`,
  );
  const c = r.chat;
  const kv = r.servers[0].kvSequences;
  console.log(
    `${c.turns}-turn chat (--max-batch ${BATCHING_MAX_BATCH}, temperature 0, a system message, ` +
      `${c.rows[0].promptTokens} prompt tokens at turn 1, replies of up to ${c.replyTokens} ` +
      `tokens); none: all ${kv} KV slabs overwritten before each turn; TTFT median of ` +
      `${o.chatReps} runs`,
  );
  // deno-fmt-ignore
  console.log(table([
    ["turn", "prompt tok", "cached reuse", "cached none", "TTFT reuse ms", "TTFT none ms", "reuse/none", "vs turn 1", "reply tok", "same reply", "runs reuse ms", "runs none ms"],
    ...c.rows.map((t) => [
      String(t.turn), String(t.promptTokens), t.cachedReuse.join("/"), t.cachedNone.join("/"),
      f(t.ttftReuseMs), f(t.ttftNoneMs), x(t.ttftReuseMs / t.ttftNoneMs),
      x(t.ttftReuseMs / c.rows[0].ttftReuseMs), String(t.replyTokens), t.identical ? "yes" : "NO",
      t.runsReuseMs.map((v) => f(v)).join(" "), t.runsNoneMs.map((v) => f(v)).join(" "),
    ]),
  ]));
  console.log(
    "replies identical with and without reuse (every turn, every run): " +
      (c.identical ? "yes" : "NO") +
      (c.coldLeaked ? "; WARNING: a cold turn found cached tokens" : ""),
  );
  for (const g of r.goals) {
    console.log(`goal ${g.name}: ${x(g.value)} (${g.detail}) -> ${g.met ? "met" : "NOT met"}`);
  }
  const s = r.seconds;
  console.log(
    `total ${f(s.total, 0)} s (warm-up ${f(s.warmup)} s, rounds ${f(s.rounds)} s, chat ` +
      `${f(s.chat)} s; servers ready after ${r.servers.map((v) => f(v.readyS)).join(" and ")} s)`,
  );
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      reps: { type: "string" },
      tokens: { type: "string" },
      "chat-reps": { type: "string" },
    },
    strict: true,
  });
  const report = makeReport(
    await measure({
      reps: positiveInt("reps", values.reps, DEFAULT_REPS),
      tokens: positiveInt("tokens", values.tokens, DEFAULT_TOKENS),
      chatReps: positiveInt("chat-reps", values["chat-reps"], DEFAULT_CHAT_REPS),
    }),
  );
  printReport(report);
  await Deno.mkdir(new URL("./out/", import.meta.url), { recursive: true });
  await Deno.writeTextFile(OUT_FILE, JSON.stringify(report, null, 1) + "\n");
  console.error(`wrote ${OUT_FILE}`);
  if (!report.chat.identical || report.chat.coldLeaked) Deno.exitCode = 1;
}

await main();
