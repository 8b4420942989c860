/**
 * Server counters and their Prometheus text exposition (format 0.0.4), following Prometheus'
 * conventions: cumulative figures are counters named `_total`, durations are histograms in
 * seconds (`_bucket{le}` cumulative up to `+Inf` = `_count`, `_sum`), one HELP and TYPE per
 * family. Families: requests by route and status, generations by outcome (completed, aborted by
 * the client, failed), prompt and completion tokens (aborted generations included), time to first
 * token and decode time, the last decode tokens/s, and the engine's figures (queue, sessions, the
 * expert cache's and GPU counters) from its stats().
 */

/** Prefix of every metric name. */
const PREFIX = "qwen_moe";

/** Upper bounds (seconds) of the time-to-first-token buckets: queue wait and prefill included. */
const TTFT_BUCKETS = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60];
/** Upper bounds (seconds) of the decode-time buckets (first to last token of a generation). */
const DECODE_BUCKETS = [0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300];

/** How a generation ended: its last token, the client going away, or an error. */
export type GenerationOutcome = "completed" | "aborted" | "failed";
const OUTCOMES: GenerationOutcome[] = ["completed", "aborted", "failed"];

/** One generation's timings. */
export interface GenerationTiming {
  promptTokens: number;
  completionTokens: number;
  /** Request arrival to first generated token (queue wait and prefill included); null when no
   * token came (aborted or failed before its first). */
  ttftSeconds: number | null;
  /** First to last token. */
  decodeSeconds: number;
  /** Default "completed". */
  outcome?: GenerationOutcome;
}

/** An engine's stats() snapshot, grouped for /stats and /metrics. */
export interface EngineFigures {
  queue: { waiting: number; busy: boolean };
  sessions: { live: number; created: number };
  /** Every other figure: the expert cache's (with hitRate) and the GPU counters. */
  cache: Record<string, number>;
}

/** Groups a stats() snapshot; hitRate comes from hits and misses when the engine gives none. */
export function splitEngineStats(stats: Record<string, number>): EngineFigures {
  const { queueWaiting = 0, queueBusy = 0, liveSessions = 0, sessionsCreated = 0, ...cache } =
    stats;
  if (!("hitRate" in cache) && "hits" in cache && "misses" in cache) {
    const total = cache.hits + cache.misses;
    cache.hitRate = total > 0 ? cache.hits / total : 0;
  }
  return {
    queue: { waiting: queueWaiting, busy: queueBusy > 0 },
    sessions: { live: liveSessions, created: sessionsCreated },
    cache,
  };
}

/** camelCase or spaced key -> snake_case metric name part. */
function snake(key: string): string {
  return key.replace(/([a-z0-9])([A-Z])/g, "$1_$2").replace(/[^a-zA-Z0-9_]/g, "_").toLowerCase();
}

function labelValue(v: string): string {
  return v.replace(/\\/g, "\\\\").replace(/"/g, '\\"').replace(/\n/g, "\\n");
}

/** `{a="x",b="y"}` (empty for no labels). */
function labelText(labels: Record<string, string>): string {
  const parts = Object.entries(labels).map(([k, v]) => `${k}="${labelValue(v)}"`);
  return parts.length ? `{${parts.join(",")}}` : "";
}

type MetricType = "counter" | "gauge" | "histogram";

/** Where an engine figure goes: family (without prefix), type, help, labels. */
interface FigureSpec {
  name: string;
  type: "counter" | "gauge";
  help: string;
  labels?: Record<string, string>;
}

const counter = (name: string, help: string, labels?: Record<string, string>): FigureSpec => ({
  name,
  type: "counter",
  help,
  labels,
});
const gauge = (name: string, help: string, labels?: Record<string, string>): FigureSpec => ({
  name,
  type: "gauge",
  help,
  labels,
});

/** The engine's known figures (stats() keys). Any other key is exported as a gauge
 * `engine_<snake_case key>`. */
const UPLOADS_HELP = "Expert uploads by path (staging: buffers kept mapped; write_buffer: " +
  "queue.writeBuffer; write_texture: into pool textures, queue.writeTexture).";

const ENGINE_FIGURES: Record<string, FigureSpec> = {
  hits: counter("expert_cache_hits_total", "Expert lookups that found the expert resident."),
  misses: counter("expert_cache_misses_total", "Expert lookups that had to load the expert."),
  hitRate: gauge("expert_cache_hit_rate", "Hits over lookups since start."),
  evictions: counter("expert_cache_evictions_total", "Experts evicted from their GPU slot."),
  prefetchIssued: counter("expert_cache_prefetch_issued_total", "Experts loaded speculatively."),
  prefetchHit: counter("expert_cache_prefetch_used_total", "Prefetched experts used."),
  prefetchWasted: counter(
    "expert_cache_prefetch_wasted_total",
    "Prefetched experts evicted unused.",
  ),
  bytesUploaded: counter("expert_cache_uploaded_bytes_total", "Expert bytes uploaded to the GPU."),
  expertSlots: gauge("expert_slots", "GPU slots for experts."),
  expertsPinned: gauge("experts_pinned", "Experts pinned by context expert sets."),
  readAheads: counter(
    "expert_read_aheads_total",
    "Expert records read ahead of their load on other threads (cold bursts).",
  ),
  stagedUploads: counter(
    "expert_uploads_total",
    UPLOADS_HELP,
    { path: "staging" },
  ),
  writeBufferUploads: counter(
    "expert_uploads_total",
    UPLOADS_HELP,
    { path: "write_buffer" },
  ),
  writeTextureUploads: counter(
    "expert_uploads_total",
    UPLOADS_HELP,
    { path: "write_texture" },
  ),
  gpuSteps: counter("gpu_steps_total", "Forward steps run on the GPU."),
  gpuReadbacks: counter("gpu_readbacks_total", "GPU to CPU readbacks."),
  gpuReruns: counter("gpu_reruns_total", "Steps rerun after an expert miss."),
  gpuStepRouted: counter(
    "gpu_step_routed_experts_total",
    "Distinct (layer, expert) pairs routed by decode steps under an expert budget.",
  ),
  gpuStepsOverRouted: counter(
    "gpu_steps_over_routed_total",
    "Decode steps that loaded more experts than they routed (0 with the load cap).",
  ),
  gpuGuessesUsed: counter(
    "gpu_guesses_used_total",
    "Experts loaded as guesses at a miss (later layers' routing on an approximate input) that " +
      "the final routing used: the predictions' hits (precision: over prefetch issued).",
  ),
  gpuGuessesMissed: counter(
    "gpu_guesses_missed_total",
    "Experts a repair loaded for its missed layer, past a token's first layer, that no guess " +
      "had brought in (recall: used / (used + missed)).",
  ),
};
for (const source of ["cold", "warm", "unknown"]) {
  const labels = { source };
  ENGINE_FIGURES[`${source}Loads`] = counter(
    "expert_loads_total",
    "Expert loads by where the bytes were (cold: disk, warm: page cache, unknown: not known).",
    labels,
  );
  ENGINE_FIGURES[`${source}LoadSeconds`] = counter(
    "expert_load_seconds_total",
    "Time spent loading experts (decode waits for them), by where the bytes were.",
    labels,
  );
  ENGINE_FIGURES[`${source}LoadMeanSeconds`] = gauge(
    "expert_load_mean_seconds",
    "Mean expert load time over the recent loads.",
    labels,
  );
  ENGINE_FIGURES[`${source}LoadP99Seconds`] = gauge(
    "expert_load_p99_seconds",
    "99th percentile expert load time over the recent loads.",
    labels,
  );
}

/** Cumulative bucket counts of one histogram. */
class Histogram {
  readonly counts: number[];
  count = 0;
  sum = 0;

  constructor(readonly bounds: number[]) {
    this.counts = bounds.map(() => 0);
  }

  observe(v: number): void {
    this.count++;
    this.sum += v;
    for (let i = 0; i < this.bounds.length; i++) if (v <= this.bounds[i]) this.counts[i]++;
  }
}

/** Families under construction: one HELP and TYPE each, samples in insertion order. */
class Exposition {
  readonly #families = new Map<string, { type: MetricType; help: string; lines: string[] }>();

  sample(
    family: string,
    type: MetricType,
    help: string,
    suffix: string,
    labels: Record<string, string>,
    value: number,
  ): void {
    const name = `${PREFIX}_${family}`;
    let f = this.#families.get(name);
    if (!f) this.#families.set(name, f = { type, help, lines: [] });
    f.lines.push(`${name}${suffix}${labelText(labels)} ${value}`);
  }

  histogram(
    family: string,
    help: string,
    labels: Record<string, string>,
    h: Histogram,
  ): void {
    h.bounds.forEach((le, i) =>
      this.sample(family, "histogram", help, "_bucket", { ...labels, le: String(le) }, h.counts[i])
    );
    this.sample(family, "histogram", help, "_bucket", { ...labels, le: "+Inf" }, h.count);
    this.sample(family, "histogram", help, "_sum", labels, h.sum);
    this.sample(family, "histogram", help, "_count", labels, h.count);
  }

  text(): string {
    const out: string[] = [];
    for (const [name, f] of this.#families) {
      out.push(`# HELP ${name} ${f.help}`, `# TYPE ${name} ${f.type}`, ...f.lines);
    }
    return out.join("\n") + "\n";
  }
}

export class ServerMetrics {
  /** "route status" -> count. */
  readonly requests = new Map<string, { route: string; status: number; count: number }>();
  readonly outcomes: Record<GenerationOutcome, number> = { completed: 0, aborted: 0, failed: 0 };
  promptTokens = 0;
  completionTokens = 0;
  readonly ttft = new Histogram(TTFT_BUCKETS);
  readonly decode = new Histogram(DECODE_BUCKETS);
  /** Tokens after the first over decode seconds, of the last completed generation (0 before). */
  lastTokensPerSecond = 0;

  /** Generations that ran to their end. */
  get generations(): number {
    return this.outcomes.completed;
  }

  countRequest(route: string, status: number): void {
    const key = `${route} ${status}`;
    const entry = this.requests.get(key) ?? { route, status, count: 0 };
    entry.count++;
    this.requests.set(key, entry);
  }

  recordGeneration(t: GenerationTiming): void {
    const outcome = t.outcome ?? "completed";
    this.outcomes[outcome]++;
    this.promptTokens += t.promptTokens;
    this.completionTokens += t.completionTokens;
    if (t.ttftSeconds !== null) {
      this.ttft.observe(t.ttftSeconds);
      this.decode.observe(t.decodeSeconds);
    }
    if (outcome === "completed" && t.completionTokens > 1 && t.decodeSeconds > 0) {
      this.lastTokensPerSecond = (t.completionTokens - 1) / t.decodeSeconds;
    }
  }

  /** Prometheus text exposition. */
  render(engine: EngineFigures = splitEngineStats({})): string {
    const { queue, sessions, cache } = engine;
    const x = new Exposition();
    for (const r of this.requests.values()) {
      x.sample("requests_total", "counter", "HTTP requests by route and status.", "", {
        route: r.route,
        status: String(r.status),
      }, r.count);
    }
    for (const outcome of OUTCOMES) {
      x.sample(
        "generations_total",
        "counter",
        "Generations by outcome: completed, aborted (client gone), failed.",
        "",
        { outcome },
        this.outcomes[outcome],
      );
    }
    const tokens = "(aborted and failed generations included)";
    x.sample(
      "prompt_tokens_total",
      "counter",
      `Prompt tokens ${tokens}.`,
      "",
      {},
      this.promptTokens,
    );
    x.sample(
      "completion_tokens_total",
      "counter",
      `Tokens generated ${tokens}.`,
      "",
      {},
      this.completionTokens,
    );
    x.histogram(
      "time_to_first_token_seconds",
      "Request arrival to first token, of every generation that produced one.",
      {},
      this.ttft,
    );
    x.histogram("decode_seconds", "First to last token of each generation.", {}, this.decode);
    x.sample(
      "tokens_per_second",
      "gauge",
      "Decode tokens/s of the last completed generation.",
      "",
      {},
      this.lastTokensPerSecond,
    );
    x.sample("queue_waiting", "gauge", "Requests waiting for the model.", "", {}, queue.waiting);
    x.sample("queue_busy", "gauge", "1 while a generation runs.", "", {}, queue.busy ? 1 : 0);
    x.sample("live_sessions", "gauge", "Sessions holding a KV cache.", "", {}, sessions.live);
    x.sample(
      "sessions_created_total",
      "counter",
      "Sessions opened.",
      "",
      {},
      sessions.created,
    );
    for (const [key, v] of Object.entries(cache)) {
      if (typeof v !== "number" || !Number.isFinite(v)) continue;
      const spec = ENGINE_FIGURES[key] ?? gauge(`engine_${snake(key)}`, `Engine figure ${key}.`);
      x.sample(spec.name, spec.type, spec.help, "", spec.labels ?? {}, v);
    }
    return x.text();
  }
}
