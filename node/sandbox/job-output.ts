import type { ChildProcess } from "node:child_process";
import type { Readable } from "node:stream";

import type { Logger } from "../../sdk/logger.ts";
import { BoundedLog, LineSplitter } from "./output.ts";

type StreamName = "stdout" | "stderr";

/**
 * What a job prints on stderr when an allocation fails under RLIMIT_DATA: glibc's strerror,
 * Python's MemoryError, C++'s bad_alloc, V8's "allocation failed" / "heap out of memory", GNU
 * tools' "memory exhausted".
 */
const OUT_OF_MEMORY =
  /cannot allocate memory|out of memory|memory exhausted|MemoryError|bad_alloc|allocation failed|ENOMEM/i;

/** Last lines of stderr looked at by the out-of-memory check. */
const STDERR_TAIL_LINES = 20;

export interface JobOutputInit {
  leaseId: string;
  logPath: string;
  logMaxBytes: number;
  lineMaxBytes: number;
  logger: Logger;
  onLine: ((stream: StreamName, line: string) => void) | undefined;
}

/**
 * A job's stdout and stderr, line by line (each capped): to its log on disk and to `onLine`. Lines
 * are held back until the job runs, since before that what is printed is the sandbox's own; the
 * last lines of stderr are kept for the out-of-memory check. A log or an `onLine` that fails is
 * reported once and stops nothing.
 */
export class JobOutput {
  readonly #leaseId: string;
  readonly #logger: Logger;
  readonly #onLine: JobOutputInit["onLine"];
  readonly #logInit: { path: string; maxBytes: number };
  /** Opened once the job runs: a sandbox prepared ahead must not hold (or rotate) the log its lease's running job writes. */
  #log: BoundedLog | undefined;
  readonly #splitters: Record<StreamName, LineSplitter>;
  readonly #held: { stream: StreamName; line: string }[] = [];
  readonly #stderrTail: string[] = [];
  #running = false;
  /**
   * The running job's end marker, in a reusable sandbox: per stream, whether it came, and whether an
   * empty line is held back (the newline the shim prints before the marker, if the marker is next).
   */
  #task:
    | {
        marker: string;
        seen: Record<StreamName, boolean>;
        emptyHeld: Record<StreamName, boolean>;
        over: Promise<void>;
        allSeen: () => void;
      }
    | undefined;
  /** A reusable sandbox's job ended: until the next one runs, what comes is dropped. */
  #betweenJobs = false;
  #onLineFailed = false;
  #logFailed = false;

  constructor({ leaseId, logPath, logMaxBytes, lineMaxBytes, logger, onLine }: JobOutputInit) {
    this.#leaseId = leaseId;
    this.#logger = logger;
    this.#onLine = onLine;
    this.#logInit = { path: logPath, maxBytes: logMaxBytes };
    this.#splitters = {
      stdout: new LineSplitter(lineMaxBytes, (line) => this.#line("stdout", line)),
      stderr: new LineSplitter(lineMaxBytes, (line) => this.#line("stderr", line)),
    };
  }

  /** Reads the job's stdout and stderr from now on. */
  read(child: ChildProcess): void {
    for (const stream of ["stdout", "stderr"] as const) {
      const readable = child[stream] as Readable;
      readable.on("data", (chunk: Buffer) => {
        this.#splitters[stream].push(chunk);
        this.#flush();
      });
      readable.on("error", () => {});
    }
  }

  /**
   * The job runs: what was held goes out, and every line from now on. In a reusable sandbox its
   * output ends at `marker` (see {@link taskOutputDone}).
   */
  run(marker?: string): void {
    try {
      this.#log = new BoundedLog(this.#logInit.path, this.#logInit.maxBytes);
    } catch (error) {
      this.#logError(error);
    }
    this.#running = true;
    this.#betweenJobs = false;
    if (marker !== undefined) {
      let allSeen = (): void => {};
      const over = new Promise<void>((resolve) => (allSeen = resolve));
      const both = { stdout: false, stderr: false };
      this.#task = { marker, seen: { ...both }, emptyHeld: { ...both }, over, allSeen };
    }
    for (const { stream, line } of this.#held.splice(0)) this.#deliver(stream, line);
    this.#flush();
  }

  /** What the sandbox printed on stderr while it failed to set up, its last partial line included. */
  setupErrors(): string {
    this.#splitters.stderr.end();
    return this.#held
      .filter((entry) => entry.stream === "stderr")
      .map((entry) => entry.line)
      .join("\n");
  }

  /** Whether the last lines of stderr say that an allocation failed. */
  saysOutOfMemory(): boolean {
    return this.saysOnStderr(OUT_OF_MEMORY);
  }

  /** Whether the last lines of stderr match `pattern`. */
  saysOnStderr(pattern: RegExp): boolean {
    return pattern.test(this.#stderrTail.join("\n"));
  }

  /** Whether the job's marker came on both streams within `ms`: all it printed is delivered. */
  async taskOutputDone(ms: number): Promise<boolean> {
    const task = this.#task;
    if (!task) return true;
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<boolean>((resolve) => (timer = setTimeout(() => resolve(false), ms)));
    try {
      return await Promise.race([task.over.then(() => true), timeout]);
    } finally {
      clearTimeout(timer);
    }
  }

  /** A reusable sandbox's job is over: its log closed, its stderr forgotten; the streams stay open for the next job. */
  endJob(): void {
    this.#task = undefined;
    this.#running = false;
    this.#betweenJobs = true;
    this.#stderrTail.length = 0;
    this.#closeLog();
    this.#log = undefined;
  }

  /** Ends reading: the streams are destroyed and their last partial lines delivered; the log is closed. */
  finish(child: ChildProcess): void {
    for (const stream of ["stdout", "stderr"] as const) {
      (child[stream] as Readable).destroy();
      this.#splitters[stream].end();
    }
    this.#closeLog();
  }

  #closeLog(): void {
    try {
      this.#log?.close();
    } catch (error) {
      this.#logger.error("cannot write the job's log", { leaseId: this.#leaseId, error });
    }
  }

  #line(stream: StreamName, line: string): void {
    const task = this.#task;
    if (task && !task.seen[stream]) {
      if (line === task.marker) {
        task.seen[stream] = true;
        task.emptyHeld[stream] = false;
        if (task.seen.stdout && task.seen.stderr) task.allSeen();
        return;
      }
      if (task.emptyHeld[stream]) {
        task.emptyHeld[stream] = false;
        this.#take(stream, "");
      }
      if (line === "") {
        task.emptyHeld[stream] = true;
        return;
      }
    } else if (task || this.#betweenJobs) {
      // After its marker, or between two jobs: the last bytes of a process the shim killed.
      return;
    }
    this.#take(stream, line);
  }

  #take(stream: StreamName, line: string): void {
    if (stream === "stderr") {
      this.#stderrTail.push(line);
      if (this.#stderrTail.length > STDERR_TAIL_LINES) this.#stderrTail.shift();
    }
    if (this.#running) this.#deliver(stream, line);
    else this.#held.push({ stream, line });
  }

  #deliver(stream: StreamName, line: string): void {
    try {
      this.#log?.append(`${new Date().toISOString()} ${stream} ${line}\n`);
    } catch (error) {
      this.#logError(error);
    }
    try {
      this.#onLine?.(stream, line);
    } catch (error) {
      if (!this.#onLineFailed) {
        this.#logger.warn("onLine threw; further errors are not logged", { leaseId: this.#leaseId, error });
      }
      this.#onLineFailed = true;
    }
  }

  #flush(): void {
    try {
      this.#log?.flush();
    } catch (error) {
      this.#logError(error);
    }
  }

  /** A failure to write the job's log is reported the first time only. */
  #logError(error: unknown): void {
    if (!this.#logFailed) this.#logger.error("cannot write the job's log", { leaseId: this.#leaseId, error });
    this.#logFailed = true;
  }
}
