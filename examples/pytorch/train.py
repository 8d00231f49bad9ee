#!/usr/bin/env python3
"""Baton example job for GPU providers: a small MLP trained with PyTorch, resumable.

A three-layer MLP is fitted by mini-batch Adam to a regression task whose data come from a seeded
generator. It runs on CUDA when a GPU is visible (the provider sets CUDA_VISIBLE_DEVICES to the
leased ones), else on the CPU, and follows the same checkpoint protocol as examples/train/train.mjs
(see examples/README.md and examples/pytorch/README.md):

- every TRAIN_CHECKPOINT_EVERY steps, and after the last one, the state goes into
  $BATON_CHECKPOINT_DIR/.tmp-step-NNNNNN/ (state.pt, then SHA256SUMS), each file and the dir are
  fsynced, the dir is renamed to step-NNNNNN and the parent fsynced; the newest 3 are kept;
- $BATON_RESUME_DIR holds one checkpoint's contents: empty or absent means a fresh start, anything
  else must be a valid checkpoint of this run or the job fails with exit code 3;
- completed checkpoints already in $BATON_CHECKPOINT_DIR (a relaunch in the same work dir) count
  too: the newest of those and the resume dir wins; leftover .tmp-* dirs are deleted;
- progress lines `BATON_PROGRESS {"step":N,"total":M}` on stdout; at the end
  $BATON_OUTPUT_DIR/result.json: {steps, seed, device, loss, weightsSha256}, written atomically.

Environment (all optional): TRAIN_STEPS (2000), TRAIN_CHECKPOINT_EVERY (200), TRAIN_SEED (1),
TRAIN_HIDDEN (256), TRAIN_BATCH (256), TRAIN_SAMPLES (16384), TRAIN_DEVICE (auto | cpu | cuda),
TRAIN_STEP_DELAY_MS (0), TRAIN_CHECKPOINT_PAUSE_MS (0, a test hook). BATON_CHECKPOINT_DIR,
BATON_RESUME_DIR and BATON_OUTPUT_DIR are set by the node; unset, they are checkpoints/, resume/
and output/ under the current directory.

Determinism: all randomness comes from seeded generators whose state is checkpointed; cuDNN
benchmarking and TF32 are off and torch.use_deterministic_algorithms(True) is on (with the cuBLAS
workspace setting it needs). Killed and resumed on the same kind of device with the same PyTorch
build, the result is the same bit for bit as a straight run. PyTorch promises no more: another GPU
model, driver or PyTorch version may give a (slightly) different result.

Exit codes: 0 done; 2 invalid TRAIN_* setting; 3 unusable checkpoint; 1 anything else.
"""

import hashlib
import json
import os
import re
import shutil
import struct
import sys
import time

# cuBLAS is deterministic only with a fixed workspace; this must be set before CUDA starts.
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

FORMAT = "baton-example-pytorch/1"
INPUTS = 32
TEACHER_HIDDEN = 64
NOISE = 0.05
LEARNING_RATE = 1e-3
WARMUP_STEPS = 100
DECAY_EVERY = 500
KEEP_CHECKPOINTS = 3
MAX_STATE_BYTES = 1 << 30
STATE_FILE = "state.pt"
SUMS_FILE = "SHA256SUMS"
CHECKPOINT_NAME = re.compile(r"^step-(\d{6,})$")
TMP_PREFIX = ".tmp-"

EXIT_FAILED = 1
EXIT_BAD_CONFIG = 2
EXIT_BAD_CHECKPOINT = 3


class JobError(Exception):
    def __init__(self, message, exit_code):
        super().__init__(message)
        self.exit_code = exit_code


def checkpoint_error(message):
    return JobError(message, EXIT_BAD_CHECKPOINT)


# --------------------------------------------------------------------------------------------
# Configuration


def int_from_env(name, default, low, high):
    text = os.environ.get(name, "")
    if text == "":
        return default
    if not re.fullmatch(r"\d+", text) or not low <= int(text) <= high:
        raise JobError(f'{name} must be an integer from {low} to {high}, got "{text}"', EXIT_BAD_CONFIG)
    return int(text)


def read_config():
    device = os.environ.get("TRAIN_DEVICE", "") or "auto"
    if device not in ("auto", "cpu", "cuda"):
        raise JobError(f'TRAIN_DEVICE must be auto, cpu or cuda, got "{device}"', EXIT_BAD_CONFIG)
    return {
        "steps": int_from_env("TRAIN_STEPS", 2000, 1, 10**9),
        "checkpoint_every": int_from_env("TRAIN_CHECKPOINT_EVERY", 200, 1, 10**9),
        "seed": int_from_env("TRAIN_SEED", 1, 0, 2**32 - 1),
        "hidden": int_from_env("TRAIN_HIDDEN", 256, 1, 65536),
        "batch": int_from_env("TRAIN_BATCH", 256, 1, 1 << 20),
        "samples": int_from_env("TRAIN_SAMPLES", 16384, 1, 1 << 26),
        "device": device,
        "step_delay_ms": int_from_env("TRAIN_STEP_DELAY_MS", 0, 0, 60_000),
        "checkpoint_pause_ms": int_from_env("TRAIN_CHECKPOINT_PAUSE_MS", 0, 0, 600_000),
        "checkpoint_dir": os.path.abspath(os.environ.get("BATON_CHECKPOINT_DIR") or "checkpoints"),
        "resume_dir": os.path.abspath(os.environ.get("BATON_RESUME_DIR") or "resume"),
        "output_dir": os.path.abspath(os.environ.get("BATON_OUTPUT_DIR") or "output"),
    }


def run_identity(config):
    """What a checkpoint must agree on with this run to be resumed by it."""
    return {
        "format": FORMAT,
        "total_steps": config["steps"],
        "seed": config["seed"],
        "model": {
            "inputs": INPUTS,
            "hidden": config["hidden"],
            "samples": config["samples"],
            "batch": config["batch"],
        },
    }


# --------------------------------------------------------------------------------------------
# PyTorch setup


def import_torch():
    try:
        import torch  # here, so that a missing PyTorch gets a clear message
    except ImportError as error:
        raise JobError(f"PyTorch is not installed ({error})", EXIT_FAILED) from error
    return torch


def make_deterministic(torch):
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    # TF32 rounds matmul inputs to 10 bits of mantissa on Ampere and later: off, for full float32.
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        torch.use_deterministic_algorithms(True)
    except AttributeError:  # PyTorch < 1.8
        print("warning: this PyTorch cannot enforce deterministic algorithms", file=sys.stderr)


def pick_device(torch, wanted):
    if wanted == "cuda" and not torch.cuda.is_available():
        raise JobError("TRAIN_DEVICE=cuda but no CUDA device is visible", EXIT_BAD_CONFIG)
    if wanted == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda")


def make_dataset(torch, config):
    """Inputs uniform in [-1, 1), labelled by a fixed random teacher network plus uniform noise.

    Made on the CPU from its own generator, so the data are the same whatever the device.
    """
    generator = torch.Generator().manual_seed(config["seed"])
    x = torch.rand(config["samples"], INPUTS, generator=generator) * 2 - 1
    w1 = torch.rand(INPUTS, TEACHER_HIDDEN, generator=generator) * 2 - 1
    b1 = torch.rand(TEACHER_HIDDEN, generator=generator) * 2 - 1
    w2 = torch.rand(TEACHER_HIDDEN, 1, generator=generator) * 2 - 1
    noise = torch.rand(config["samples"], 1, generator=generator) * 2 - 1
    y = torch.relu(x @ w1 + b1) @ w2 / TEACHER_HIDDEN**0.5 + NOISE * noise
    return x, y


def make_model(torch, config):
    torch.manual_seed(config["seed"] + 1)  # the initial weights (made on the CPU)
    hidden = config["hidden"]
    return torch.nn.Sequential(
        torch.nn.Linear(INPUTS, hidden),
        torch.nn.ReLU(),
        torch.nn.Linear(hidden, hidden),
        torch.nn.ReLU(),
        torch.nn.Linear(hidden, 1),
    )


def learning_rate(step):
    """Linear warm-up, then halved every DECAY_EVERY steps; a function of the step only."""
    rate = LEARNING_RATE * (step + 1) / WARMUP_STEPS if step < WARMUP_STEPS else LEARNING_RATE
    return rate * 0.5 ** (step // DECAY_EVERY)


# --------------------------------------------------------------------------------------------
# Checkpoints


def checkpoint_name(step):
    return f"step-{step:06d}"


def sha256_file(path):
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fsync_dir(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durable(path, write):
    with open(path, "xb") as file:
        write(file)
        file.flush()
        os.fsync(file.fileno())


def list_checkpoints(directory):
    """The completed checkpoints in `directory`, oldest first, as (step, name)."""
    found = []
    for entry in os.scandir(directory):
        match = CHECKPOINT_NAME.match(entry.name)
        if match and entry.is_dir(follow_symlinks=False):
            found.append((int(match.group(1)), entry.name))
    return sorted(found)


def save_checkpoint(torch, config, step, model, optimizer, batch_generator):
    name = checkpoint_name(step)
    tmp = os.path.join(config["checkpoint_dir"], TMP_PREFIX + name)
    final = os.path.join(config["checkpoint_dir"], name)
    shutil.rmtree(tmp, ignore_errors=True)
    os.mkdir(tmp, 0o700)
    state = {
        **run_identity(config),
        "step": step,
        "weights": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "batch_rng": batch_generator.get_state(),
    }
    state_path = os.path.join(tmp, STATE_FILE)
    write_durable(state_path, lambda file: torch.save(state, file))
    if config["checkpoint_pause_ms"] > 0:  # test hook: a half-written checkpoint on disk
        print(f"checkpoint {name} half-written")
        time.sleep(config["checkpoint_pause_ms"] / 1000)
    line = f"{sha256_file(state_path)}  {STATE_FILE}\n".encode()
    write_durable(os.path.join(tmp, SUMS_FILE), lambda file: file.write(line))
    fsync_dir(tmp)
    os.rename(tmp, final)
    fsync_dir(config["checkpoint_dir"])
    print(f"checkpoint {name} saved")
    for _, old in list_checkpoints(config["checkpoint_dir"])[:-KEEP_CHECKPOINTS]:
        shutil.rmtree(os.path.join(config["checkpoint_dir"], old), ignore_errors=True)


def load_checkpoint(torch, directory, config):
    """Reads and checks the checkpoint whose files are in `directory`; raises (exit 3) if amiss."""
    where = f"checkpoint {directory}"
    state_path = os.path.join(directory, STATE_FILE)
    sums_path = os.path.join(directory, SUMS_FILE)
    for path in (state_path, sums_path):
        if not os.path.lexists(path):
            raise checkpoint_error(f"{where} is incomplete: {os.path.basename(path)} is missing")
        if os.path.islink(path) or not os.path.isfile(path):
            raise checkpoint_error(f"{where}: {os.path.basename(path)} is not a regular file")
        if os.path.getsize(path) > MAX_STATE_BYTES:
            raise checkpoint_error(f"{where}: {os.path.basename(path)} is too large")
    with open(sums_path, "rb") as file:
        sums = file.read()
    listed = re.fullmatch(rb"([0-9a-f]{64})  state\.pt\n", sums)
    if not listed:
        raise checkpoint_error(f"{where}: {SUMS_FILE} is malformed")
    if sha256_file(state_path) != listed.group(1).decode():
        raise checkpoint_error(
            f"{where}: {STATE_FILE} does not match its checksum in {SUMS_FILE} (corrupt or truncated)"
        )
    try:
        # weights_only: tensors, dicts and numbers only, never arbitrary pickled objects.
        saved = torch.load(state_path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise checkpoint_error(f"{where}: {STATE_FILE} cannot be read ({error})") from error
    if not isinstance(saved, dict):
        raise checkpoint_error(f"{where}: {STATE_FILE} does not hold a dict")
    for key, expected in run_identity(config).items():
        if saved.get(key) != expected:
            raise checkpoint_error(
                f"{where} belongs to another run: {key} is {json.dumps(saved.get(key), default=str)}, "
                f"this run has {json.dumps(expected)}"
            )
    step = saved.get("step")
    if not isinstance(step, int) or not 0 <= step <= config["steps"]:
        raise checkpoint_error(f"{where}: step must be an integer from 0 to {config['steps']}")
    for key in ("weights", "optimizer", "batch_rng"):
        if key not in saved:
            raise checkpoint_error(f"{where}: {key} is missing")
    return saved


def find_resume_state(torch, config):
    """The newest of the local checkpoints (a relaunch here) and the resume dir's; None: fresh."""
    for entry in os.listdir(config["checkpoint_dir"]):
        if entry.startswith(TMP_PREFIX):  # half-written by an earlier run: never used
            shutil.rmtree(os.path.join(config["checkpoint_dir"], entry), ignore_errors=True)
    found = []
    local = list_checkpoints(config["checkpoint_dir"])
    if local:
        step, name = local[-1]
        directory = os.path.join(config["checkpoint_dir"], name)
        saved = load_checkpoint(torch, directory, config)
        if saved["step"] != step:
            raise checkpoint_error(f"checkpoint {directory} holds step {saved['step']}")
        found.append((saved, directory))
    entries = os.listdir(config["resume_dir"]) if os.path.isdir(config["resume_dir"]) else []
    if entries:
        if STATE_FILE not in entries and any(CHECKPOINT_NAME.match(entry) for entry in entries):
            raise checkpoint_error(
                f"resume dir {config['resume_dir']} holds a checkpoint dir ({', '.join(sorted(entries))}) "
                f"instead of a checkpoint: put the contents of one step-* dir ({STATE_FILE}, {SUMS_FILE}) in it"
            )
        found.append((load_checkpoint(torch, config["resume_dir"], config), config["resume_dir"]))
    best = None
    for candidate in found:  # the newest wins; on a tie, the local one (listed first)
        if best is None or candidate[0]["step"] > best[0]["step"]:
            best = candidate
    return best


# --------------------------------------------------------------------------------------------
# The job


def report_progress(**progress):
    print("BATON_PROGRESS " + json.dumps(progress, separators=(",", ":")))


def weights_sha256(model):
    """sha256 of every parameter's exact float32 values, little-endian, in state_dict order."""
    digest = hashlib.sha256()
    for tensor in model.state_dict().values():
        values = tensor.detach().to("cpu").flatten().tolist()
        digest.update(struct.pack(f"<{len(values)}f", *values))
    return digest.hexdigest()


def write_result(output_dir, result):
    path = os.path.join(output_dir, "result.json")
    tmp = os.path.join(output_dir, ".result.json.tmp")
    if os.path.lexists(tmp):
        os.remove(tmp)
    write_durable(tmp, lambda file: file.write((json.dumps(result, indent=2) + "\n").encode()))
    os.rename(tmp, path)
    fsync_dir(output_dir)


def main():
    sys.stdout.reconfigure(line_buffering=True)  # every line reaches the node as it is printed
    config = read_config()
    torch = import_torch()
    make_deterministic(torch)
    device = pick_device(torch, config["device"])
    for directory in (config["checkpoint_dir"], config["output_dir"]):
        os.makedirs(directory, exist_ok=True)

    x, y = make_dataset(torch, config)
    x, y = x.to(device), y.to(device)
    model = make_model(torch, config).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    batch_generator = torch.Generator().manual_seed(config["seed"] + 2)  # CPU: same order on any device
    step = 0
    resumed = find_resume_state(torch, config)
    if resumed is None:
        print(f"starting fresh at step 0 on {device.type}")
    else:
        saved, source = resumed
        try:
            model.load_state_dict(saved["weights"])
            optimizer.load_state_dict(saved["optimizer"])
            batch_generator.set_state(saved["batch_rng"])
        except Exception as error:
            raise checkpoint_error(f"checkpoint {source} does not fit this model ({error})") from error
        step = saved["step"]
        print(f"resuming at step {step} from {source} on {device.type}")

    total = config["steps"]
    progress_every = max(1, total // 100)
    report_progress(step=step, total=total)
    loss_fn = torch.nn.MSELoss()
    while step < total:
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step)
        index = torch.randint(0, config["samples"], (config["batch"],), generator=batch_generator).to(device)
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(x[index]), y[index])
        loss.backward()
        optimizer.step()
        step += 1
        if step % config["checkpoint_every"] == 0 or step == total:
            save_checkpoint(torch, config, step, model, optimizer, batch_generator)
        if step % progress_every == 0 and step < total:
            report_progress(step=step, total=total, message=f"batch loss {loss.item():.6g}")
        if config["step_delay_ms"] > 0:
            time.sleep(config["step_delay_ms"] / 1000)

    with torch.no_grad():
        final_loss = loss_fn(model(x), y).item()
    result = {
        "steps": total,
        "seed": config["seed"],
        "device": device.type,
        "loss": repr(final_loss),
        "weightsSha256": weights_sha256(model),
    }
    write_result(config["output_dir"], result)
    report_progress(step=total, total=total, message=f"done, loss {final_loss:.6g}")
    print("result " + json.dumps(result, separators=(",", ":")))


if __name__ == "__main__":
    try:
        main()
    except JobError as error:
        print(f"train.py: error: {error}", file=sys.stderr)
        sys.exit(error.exit_code)
