/**
 * Structured logs: one JSON object per line (time, level, component, message, fields), so that an
 * operator can grep them and a log shipper can parse them. Secrets never go in fields: job keys
 * and private keys are not logged anywhere.
 */
/** The levels, least severe first: a logger writes its own level and those after it. */
export const logLevels = ["debug", "info", "warn", "error"] as const;
export type LogLevel = (typeof logLevels)[number];

const ORDER: Record<LogLevel, number> = { debug: 10, info: 20, warn: 30, error: 40 };

export interface Logger {
  debug(message: string, fields?: Record<string, unknown>): void;
  info(message: string, fields?: Record<string, unknown>): void;
  warn(message: string, fields?: Record<string, unknown>): void;
  error(message: string, fields?: Record<string, unknown>): void;
  /** A logger for a sub-component, e.g. `log.child("bids")`. */
  child(component: string): Logger;
}

export interface CreateLoggerOptions {
  level?: LogLevel;
  /** Where lines go; stderr by default so stdout stays free for command output. */
  write?: (line: string) => void;
}

/** A field as JSON takes it: bigints as decimal strings (inside arrays and objects too), errors by name and message. */
function serialise(value: unknown): unknown {
  if (typeof value === "bigint") return value.toString();
  if (value instanceof Error) return { name: value.name, message: value.message };
  return value;
}

/** JSON.stringify's replacer: a bigint anywhere (a list of lease ids) must not make a log line throw. */
const bigintsAsStrings = (_key: string, value: unknown): unknown =>
  typeof value === "bigint" ? value.toString() : value;

export function createLogger(component: string, options: CreateLoggerOptions = {}): Logger {
  const threshold = ORDER[options.level ?? "info"];
  const write = options.write ?? ((line: string) => process.stderr.write(line + "\n"));
  const log =
    (level: LogLevel) =>
    (message: string, fields: Record<string, unknown> = {}): void => {
      if (ORDER[level] < threshold) return;
      const entry: Record<string, unknown> = { t: new Date().toISOString(), level, component, msg: message };
      for (const [key, value] of Object.entries(fields)) entry[key] = serialise(value);
      write(JSON.stringify(entry, bigintsAsStrings));
    };
  return {
    debug: log("debug"),
    info: log("info"),
    warn: log("warn"),
    error: log("error"),
    child: (sub) => createLogger(`${component}.${sub}`, options),
  };
}

/** A logger that drops everything, for library callers who did not ask for logs. */
export const silentLogger: Logger = {
  debug: () => {},
  info: () => {},
  warn: () => {},
  error: () => {},
  child: () => silentLogger,
};
