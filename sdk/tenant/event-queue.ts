/**
 * A push-based async iterable: producers `push` events, one consumer iterates them in order. Ends
 * when `end` is called (after what was pushed is consumed). Events are kept until read, so a slow
 * consumer misses nothing.
 */
export interface EventQueue<T> extends AsyncIterable<T> {
  push(event: T): void;
  end(): void;
  readonly ended: boolean;
}

export function createEventQueue<T>(): EventQueue<T> {
  const buffered: T[] = [];
  let ended = false;
  let wake: (() => void) | undefined;
  return {
    push(event) {
      if (ended) return;
      buffered.push(event);
      wake?.();
    },
    end() {
      ended = true;
      wake?.();
    },
    get ended() {
      return ended;
    },
    async *[Symbol.asyncIterator]() {
      for (;;) {
        const next = buffered.shift();
        if (next !== undefined) {
          yield next;
          continue;
        }
        if (ended) return;
        await new Promise<void>((resolve) => (wake = resolve));
        wake = undefined;
      }
    },
  };
}
