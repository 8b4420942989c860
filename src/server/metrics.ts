/**
 * Server counters and their Prometheus text exposition (format 0.0.4): requests by route and
 * status, prompt and completion tokens, time to first token, decode tokens/s, and the engine's
 * figures (queue depth, live sessions, the expert cache's and GPU counters) from its stats().
 */

/** Prefix of every metric name. */
const PREFIX = "qwen_moe";

/** One finished generation's timings. */
export interface GenerationTiming {
  promptTokens: number;
  completionTokens: number;
  /** Request arrival to first generated token (queue wait and prefill included). */
  ttftSeconds: number;
  /** First to last token. */
  decodeSeconds: number;
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

export class ServerMetrics {
  /** "route status" -> count. */
  readonly requests = new Map<string, { route: string; status: number; count: number }>();
  promptTokens = 0;
  completionTokens = 0;
  generations = 0;
  ttftSum = 0;
  decodeSecondsSum = 0;
  /** Tokens after the first over decode seconds, of the last generation (0 before any). */
  lastTokensPerSecond = 0;

  countRequest(route: string, status: number): void {
    const key = `${route} ${status}`;
    const entry = this.requests.get(key) ?? { route, status, count: 0 };
    entry.count++;
    this.requests.set(key, entry);
  }

  recordGeneration(t: GenerationTiming): void {
    this.generations++;
    this.promptTokens += t.promptTokens;
    this.completionTokens += t.completionTokens;
    this.ttftSum += t.ttftSeconds;
    this.decodeSecondsSum += t.decodeSeconds;
    if (t.completionTokens > 1 && t.decodeSeconds > 0) {
      this.lastTokensPerSecond = (t.completionTokens - 1) / t.decodeSeconds;
    }
  }

  /** Prometheus text; the cache figures' names become snake_case. */
  render(engine: EngineFigures = splitEngineStats({})): string {
    const { queue, sessions, cache } = engine;
    const lines: string[] = [];
    const metric = (name: string, type: string, help: string, samples: [string, number][]) => {
      lines.push(`# HELP ${PREFIX}_${name} ${help}`, `# TYPE ${PREFIX}_${name} ${type}`);
      for (const [labels, v] of samples) lines.push(`${PREFIX}_${name}${labels} ${v}`);
    };
    metric(
      "requests_total",
      "counter",
      "HTTP requests by route and status.",
      [...this.requests.values()].map((
        r,
      ) => [`{route="${labelValue(r.route)}",status="${r.status}"}`, r.count]),
    );
    metric("prompt_tokens_total", "counter", "Prompt tokens processed.", [["", this.promptTokens]]);
    metric("completion_tokens_total", "counter", "Tokens generated.", [[
      "",
      this.completionTokens,
    ]]);
    metric("time_to_first_token_seconds", "summary", "Request arrival to first token.", [
      ["_sum", this.ttftSum],
      ["_count", this.generations],
    ]);
    metric("decode_seconds", "summary", "First to last token of each generation.", [
      ["_sum", this.decodeSecondsSum],
      ["_count", this.generations],
    ]);
    metric("tokens_per_second", "gauge", "Decode tokens/s of the last generation.", [[
      "",
      this.lastTokensPerSecond,
    ]]);
    metric("queue_waiting", "gauge", "Requests waiting for the model.", [["", queue.waiting]]);
    metric("queue_busy", "gauge", "1 while a generation runs.", [["", queue.busy ? 1 : 0]]);
    metric("live_sessions", "gauge", "Sessions holding a KV cache.", [["", sessions.live]]);
    for (const [key, v] of Object.entries(cache)) {
      if (typeof v !== "number" || !Number.isFinite(v)) continue;
      metric(`expert_cache_${snake(key)}`, "gauge", `Expert cache ${key}.`, [["", v]]);
    }
    return lines.join("\n") + "\n";
  }
}
