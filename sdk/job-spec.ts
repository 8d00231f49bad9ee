import { readFile } from "node:fs/promises";
import { parse as parseYaml } from "yaml";
import { z } from "zod";

import { UserError } from "./errors.ts";

/** A job spec file larger than this is refused before it is parsed. */
export const MAX_JOB_SPEC_BYTES = 64 * 1024;

const envNameSchema = z
  .string()
  .regex(/^[A-Z_][A-Z0-9_]*$/, "env names are upper-case letters, digits and _")
  .refine((name) => !name.startsWith("BATON_"), "BATON_* variables are set by the node");

/**
 * What a job needs and how to run it. Validated at every boundary: when a tenant loads a file, and
 * again when a provider receives it.
 */
export const jobSpecSchema = z
  .object({
    name: z.string().min(1).max(128).default("job"),
    /** argv: `command[0]` is looked up on the sandbox's PATH. */
    command: z.array(z.string().max(4096)).min(1).max(256),
    env: z.record(envNameSchema, z.string().max(8192)).default({}),
    /** Files fetched by CID into the job's work dir before it starts. */
    inputs: z
      .array(
        z.object({
          cid: z.string().min(1).max(256),
          path: z
            .string()
            .min(1)
            .max(256)
            .regex(/^[A-Za-z0-9._-][A-Za-z0-9._/-]*$/, "a relative path of plain names")
            .refine((p) => !p.split("/").includes(".."), "no .. in input paths"),
        }),
      )
      .max(64)
      .default([]),
    resources: z
      .object({
        gpus: z.number().int().min(0).max(64).default(0),
        gpuModel: z.string().max(128).optional(),
        minVramMiB: z.number().int().positive().optional(),
        cpus: z.number().positive().max(1024).default(1),
        memoryMiB: z
          .number()
          .int()
          .positive()
          .max(16 * 1024 * 1024)
          .default(1024),
      })
      .default({ gpus: 0, cpus: 1, memoryMiB: 1024 }),
    /** Whether the job may reach the network; off unless asked for. */
    network: z.boolean().default(false),
    /** How often the job is expected to checkpoint, in seconds (a hint for scheduling and display). */
    checkpointIntervalS: z.number().positive().max(86_400).optional(),
    /** Longest the job may run, in seconds. */
    maxDurationS: z
      .number()
      .int()
      .positive()
      .max(30 * 86_400)
      .default(3600),
  })
  .strict();

export type JobSpec = z.output<typeof jobSpecSchema>;
export type JobSpecInput = z.input<typeof jobSpecSchema>;

/**
 * Validates a job spec object.
 *
 * @throws {UserError} listing what is wrong.
 */
export function parseJobSpec(value: unknown, source = "job spec"): JobSpec {
  const parsed = jobSpecSchema.safeParse(value);
  if (!parsed.success) throw new UserError(`${source} is invalid`, { details: z.prettifyError(parsed.error) });
  return parsed.data;
}

/**
 * Reads a job spec from a YAML or JSON file.
 *
 * @example
 * const spec = await loadJobSpec("examples/train/train.yaml");
 */
export async function loadJobSpec(file: string): Promise<JobSpec> {
  let text: string;
  try {
    text = await readFile(file, "utf8");
  } catch (cause) {
    throw new UserError(`cannot read job spec ${file}`, { cause });
  }
  if (Buffer.byteLength(text) > MAX_JOB_SPEC_BYTES) {
    throw new UserError(`job spec ${file} is larger than ${MAX_JOB_SPEC_BYTES} bytes`);
  }
  let value: unknown;
  try {
    value = parseYaml(text);
  } catch (cause) {
    throw new UserError(`job spec ${file} is not valid YAML or JSON`, { cause });
  }
  return parseJobSpec(value, `job spec ${file}`);
}
