import { readFile } from "node:fs/promises";
import path from "node:path";

import { parse as parseYaml } from "yaml";
import { z } from "zod";

import { UserError } from "./errors.ts";
import { MAX_IMAGE_REFERENCE_LENGTH, parseImageReference } from "./images/reference.ts";

/** A job spec file larger than this is refused before it is parsed. */
export const MAX_JOB_SPEC_BYTES = 64 * 1024;

/**
 * Disk quota of a job that does not state one (`resources.diskGiB`): room for a model of a few GB,
 * its checkpoints and a data set shard, while a job that forgot to ask cannot fill a provider's disk.
 */
export const DEFAULT_JOB_DISK_GIB = 10;

/** The smallest disk quota, 64 MiB: below it the file system a provider makes for the work dir is mostly its own bookkeeping. */
export const MIN_JOB_DISK_GIB = 1 / 16;

/** The largest disk quota a spec may ask for (64 TiB); each provider caps it lower (`maxJobDiskGiB`). */
export const MAX_JOB_DISK_GIB = 64 * 1024;

/** A disk quota in bytes: `diskGiB` rounded up to whole MiB. */
export function diskQuotaBytes(diskGiB: number): number {
  return Math.ceil(diskGiB * 1024) * 2 ** 20;
}

/** A job's disk quota in GiB: its spec's `resources.diskGiB`, or {@link DEFAULT_JOB_DISK_GIB}. */
export function jobDiskGiB(spec: { resources: { diskGiB?: number | undefined } }): number {
  return spec.resources.diskGiB ?? DEFAULT_JOB_DISK_GIB;
}

/** A disk quota as people read it: whole GiB as such (`10 GiB`), anything else in MiB (`64 MiB`). */
export function formatDiskQuota(bytes: number): string {
  return bytes % 2 ** 30 === 0 ? `${bytes / 2 ** 30} GiB` : `${Math.ceil(bytes / 2 ** 20)} MiB`;
}

const envNameSchema = z
  .string()
  .regex(/^[A-Z_][A-Z0-9_]*$/, "env names are upper-case letters, digits and _")
  .refine((name) => !name.startsWith("BATON_"), "BATON_* variables are set by the node");

const imageReferenceSchema = z
  .string()
  .max(MAX_IMAGE_REFERENCE_LENGTH)
  .superRefine((text, context) => {
    try {
      parseImageReference(text);
    } catch (error) {
      context.addIssue({ code: "custom", message: (error as Error).message });
    }
  });

/**
 * The container image a job runs in: a registry reference (pinned to a digest by the SDK when the
 * job is submitted, so every lease of the job runs the same image), or the IPFS CID of an OCI image
 * layout (`baton image add`), fetched like an input from the tenant or any peer that holds it.
 */
export const jobImageSchema = z.union([imageReferenceSchema, z.object({ cid: z.string().min(1).max(256) }).strict()]);
export type JobImage = z.output<typeof jobImageSchema>;

/**
 * What a job needs and how to run it. Validated at every boundary: when a tenant loads a file, and
 * again when a provider receives it.
 */
export const jobSpecSchema = z
  .object({
    name: z.string().min(1).max(128).default("job"),
    /**
     * A container image to run the job in; without one the job runs against the provider's own
     * system (read-only) in a bubblewrap sandbox.
     */
    image: jobImageSchema.optional(),
    /**
     * argv: `command[0]` is looked up on the sandbox's PATH. Required without an image; with one it
     * replaces the image's entrypoint and command (as Kubernetes' `command` does), and the image's
     * own are run when it is left out.
     */
    command: z.array(z.string().max(4096)).min(1).max(256).optional(),
    /** With an image: the working directory, instead of the image's. */
    workdir: z.string().startsWith("/").max(1024).optional(),
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
        /**
         * The job's disk quota, in GiB (fractions allowed: 0.5 is 512 MiB): what its work dir may
         * hold, its inputs, resume checkpoint, checkpoints, output and `tmp/` included. A job that
         * goes over it fails with the reason `disk` (see "Disk quotas" in the README for how providers
         * enforce it); a provider refuses a bid for more than its `maxJobDiskGiB`. Left out:
         * {@link DEFAULT_JOB_DISK_GIB} (see {@link jobDiskGiB}).
         */
        diskGiB: z.number().min(MIN_JOB_DISK_GIB).max(MAX_JOB_DISK_GIB).optional(),
      })
      .default({ gpus: 0, cpus: 1, memoryMiB: 1024 }),
    /** Whether the job may reach the network; off unless asked for. */
    network: z.boolean().default(false),
    /** How often the job is expected to checkpoint, in seconds (a hint for scheduling and display). */
    checkpointIntervalS: z.number().positive().max(86_400).optional(),
    /** For a server job (`serve`): the path that answers 200 once a replica may take traffic. */
    service: z
      .object({ readinessPath: z.string().startsWith("/").max(1024).default("/health") })
      .strict()
      .optional(),
    /** Longest the job may run, in seconds. */
    maxDurationS: z
      .number()
      .int()
      .positive()
      .max(30 * 86_400)
      .default(3600),
  })
  .strict()
  .refine((spec) => spec.image !== undefined || spec.command !== undefined, {
    message: "a job without an image needs a command",
    path: ["command"],
  })
  .refine((spec) => spec.image !== undefined || spec.workdir === undefined, {
    message: "workdir is for image jobs (a process job always starts in its work dir)",
    path: ["workdir"],
  });

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

/** A job spec read from a file, with the local files its inputs name. */
export interface JobFile {
  spec: JobSpec;
  /**
   * Inputs given as `{ file, path }` in the file rather than `{ cid, path }`: work-dir path → local
   * file (resolved against the spec file's directory). The SDK adds them to IPFS and fills in CIDs.
   */
  files: Record<string, string>;
}

const fileInputSchema = z.object({ file: z.string().min(1).max(4096), path: z.string() }).strict();

/**
 * Reads a job spec from a YAML or JSON file. Inputs may name a local `file` instead of a `cid`.
 *
 * @example
 * const { spec, files } = await readJobFile("examples/train/train.yaml");
 */
export async function readJobFile(file: string): Promise<JobFile> {
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
  const files: Record<string, string> = {};
  if (value && typeof value === "object" && Array.isArray((value as { inputs?: unknown }).inputs)) {
    const object = value as { inputs: unknown[] };
    object.inputs = object.inputs.filter((input) => {
      const local = fileInputSchema.safeParse(input);
      if (!local.success) return true;
      files[local.data.path] = path.resolve(path.dirname(file), local.data.file);
      return false;
    });
  }
  const spec = parseJobSpec(value, `job spec ${file}`);
  for (const target of Object.keys(files)) {
    // The same path rules as CID inputs: checked by parsing it as one.
    parseJobSpec({ ...spec, inputs: [{ cid: "placeholder", path: target }] }, `job spec ${file}`);
  }
  return { spec, files };
}
