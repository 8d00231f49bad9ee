/**
 * The simulation's clock: a binary min-heap of events by time. Events at the same time come out in
 * the order they were pushed, so a run is the same for the same seed.
 */
export interface SimEvent {
  time: number;
  kind: number;
  /** The provider or job the event is about. */
  subject: number;
  /** A generation count: an event whose subject moved on since it was pushed is stale. */
  epoch: number;
}

interface Entry extends SimEvent {
  order: number;
}

export class EventQueue {
  #heap: Entry[] = [];
  #pushed = 0;
  /** Entries to reuse: millions of events, few allocations. */
  #free: Entry[] = [];
  /** The entry `pop` returned last, free once `pop` is called again. */
  #returned: Entry | undefined;

  get size(): number {
    return this.#heap.length;
  }

  push(time: number, kind: number, subject: number, epoch = 0): void {
    const heap = this.#heap;
    const entry: Entry = this.#free.pop() ?? { time, kind, subject, epoch, order: 0 };
    entry.time = time;
    entry.kind = kind;
    entry.subject = subject;
    entry.epoch = epoch;
    entry.order = this.#pushed++;
    let i = heap.length;
    heap.push(entry);
    while (i > 0) {
      const parent = (i - 1) >> 1;
      if (!before(entry, heap[parent]!)) break;
      heap[i] = heap[parent]!;
      i = parent;
    }
    heap[i] = entry;
  }

  /** The earliest event; valid until the next `pop` (its object is then reused). */
  pop(): Readonly<SimEvent> | undefined {
    const heap = this.#heap;
    const top = heap[0];
    if (this.#returned) this.#free.push(this.#returned);
    this.#returned = top;
    const last = heap.pop();
    if (top === undefined || last === undefined || heap.length === 0) return top;
    let i = 0;
    for (;;) {
      const left = 2 * i + 1;
      if (left >= heap.length) break;
      const right = left + 1;
      const child = right < heap.length && before(heap[right]!, heap[left]!) ? right : left;
      if (!before(heap[child]!, last)) break;
      heap[i] = heap[child]!;
      i = child;
    }
    heap[i] = last;
    return top;
  }
}

function before(x: Entry, y: Entry): boolean {
  return x.time < y.time || (x.time === y.time && x.order < y.order);
}
