/**
 * A FIFO lock: one generation at a time per model, in arrival order. A waiter whose request is
 * aborted (client gone) leaves the line without ever holding the lock.
 */

/** The request was aborted while it waited for its turn. */
export class QueueAbortedError extends Error {
  override name = "QueueAbortedError";
  constructor() {
    super("request aborted while waiting in the generation queue");
  }
}

interface Waiter {
  grant: (release: () => void) => void;
}

export class GenerationQueue {
  #busy = false;
  readonly #line: Waiter[] = [];

  /** Requests waiting (not counting the one generating). */
  get waiting(): number {
    return this.#line.length;
  }

  /** Whether a generation holds the lock. */
  get busy(): boolean {
    return this.#busy;
  }

  /** Resolves with a release function once it is this caller's turn. */
  acquire(signal?: AbortSignal): Promise<() => void> {
    if (signal?.aborted) return Promise.reject(new QueueAbortedError());
    return new Promise((resolve, reject) => {
      const waiter: Waiter = {
        grant: (release) => {
          signal?.removeEventListener("abort", onAbort);
          resolve(release);
        },
      };
      const onAbort = () => {
        const i = this.#line.indexOf(waiter);
        if (i >= 0) this.#line.splice(i, 1);
        reject(new QueueAbortedError());
      };
      signal?.addEventListener("abort", onAbort, { once: true });
      this.#line.push(waiter);
      this.#next();
    });
  }

  /** Runs `fn` holding the lock. */
  async run<T>(fn: () => Promise<T>, signal?: AbortSignal): Promise<T> {
    const release = await this.acquire(signal);
    try {
      return await fn();
    } finally {
      release();
    }
  }

  #next(): void {
    if (this.#busy) return;
    const waiter = this.#line.shift();
    if (!waiter) return;
    this.#busy = true;
    let released = false;
    waiter.grant(() => {
      if (released) return;
      released = true;
      this.#busy = false;
      this.#next();
    });
  }
}
