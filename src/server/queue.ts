/**
 * A FIFO line of generations: up to `capacity` run at once (the sequences the model decodes
 * together), the rest wait in arrival order, at most `maxWaiting` of them (more are refused with
 * QueueFullError). A waiter whose request is aborted (client gone) leaves the line without ever
 * holding a place.
 */

/** The request was aborted while it waited for its turn. */
export class QueueAbortedError extends Error {
  override name = "QueueAbortedError";
  constructor() {
    super("request aborted while waiting in the generation queue");
  }
}

/** The line is full: the request is refused at once (HTTP 503 with Retry-After). */
export class QueueFullError extends Error {
  override name = "QueueFullError";
  constructor(waiting: number) {
    super(
      `the server is at capacity: ${waiting} requests are already waiting; retry in a moment`,
    );
  }
}

interface Waiter {
  grant: (release: () => void) => void;
}

export class GenerationQueue {
  #running = 0;
  readonly #line: Waiter[] = [];

  constructor(readonly capacity = 1, readonly maxWaiting = Infinity) {}

  /** Requests waiting (not counting those generating). */
  get waiting(): number {
    return this.#line.length;
  }

  /** Generations holding a place. */
  get running(): number {
    return this.#running;
  }

  /** Whether every place is taken. */
  get busy(): boolean {
    return this.#running >= this.capacity;
  }

  /** Whether a new request would be refused now. */
  get full(): boolean {
    return this.busy && this.#line.length >= this.maxWaiting;
  }

  /** Resolves with a release function once it is this caller's turn; rejects with QueueFullError
   * at once when the line is full. */
  acquire(signal?: AbortSignal): Promise<() => void> {
    if (signal?.aborted) return Promise.reject(new QueueAbortedError());
    if (this.full) return Promise.reject(new QueueFullError(this.#line.length));
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
    while (this.#running < this.capacity) {
      const waiter = this.#line.shift();
      if (!waiter) return;
      this.#running++;
      let released = false;
      waiter.grant(() => {
        if (released) return;
        released = true;
        this.#running--;
        this.#next();
      });
    }
  }
}
