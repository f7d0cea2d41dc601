"""Checkpoints that survive a kill, and exact resume.

Layout of `output_dir/checkpoints/step_<n>/`:
    model.safetensors      weights (safetensors)
    trainer.pt             optimizer, LR scheduler, grad scaler (loaded with weights_only=True)
    rng_<rank>.pt          every RNG of each process (loaded with weights_only=True)
    state.json             step counters, data position, and the run's identity (effective batch, seed)

Under FSDP the weights and the optimizer's state are sharded: instead of model.safetensors and trainer.pt's
optimizer, `sharded/` holds one file per process and an index (framework.io.sharded), listed with sizes and
SHA-256 in state.json. Either kind resumes on any number of processes, with or without FSDP.

A checkpoint is written into a hidden temporary folder and renamed when
complete, so a kill mid-write leaves the previous checkpoint as the latest
one; a folder without state.json is never picked up. Nothing is unpickled
beyond tensors and plain containers, except a sharded checkpoint's index:
torch.distributed.checkpoint pickles `.metadata`, and it is read only after
its SHA-256 matched the one state.json recorded (resume only checkpoints
your own runs wrote, as with any file that can hold pickled objects).
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import re
import shutil
import zipfile
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType
from safetensors import safe_open
from safetensors.torch import save_file

from framework.core.errors import FlagError, UserError
from framework.core.rng import capture_rng_state, restore_rng_state
from framework.data.identity import identity_problem, training_identity
from framework.io.files import umask_mode
from framework.io.sharded import (
    SHARDED_DIR,
    load_full_into_sharded,
    load_sharded,
    manifest_problem,
    save_sharded,
    shard_manifest,
    sharded_shapes,
)
from framework.io.weights import WEIGHTS_FILE, bare_model, model_state_dict, weights_problem

STATE_FILE = "state.json"
TRAINER_FILE = "trainer.pt"
_STEP_DIR = re.compile(r"^step_(\d+)$")


def checkpoint_root(output_dir: str | Path) -> Path:
    """The folder holding a run's checkpoints."""
    return Path(output_dir) / "checkpoints"


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first (a folder without state.json is incomplete)."""
    root = checkpoint_root(output_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found) if (p / STATE_FILE).is_file()]


def _torch_file_problem(path: Path) -> Optional[str]:
    """Why a file written by torch.save cannot be read, or None: it is a zip archive whose index sits at
    the end, so a truncated or overwritten file fails to open without reading its tensors."""
    try:
        with zipfile.ZipFile(path) as archive:
            if not any(name.endswith("data.pkl") for name in archive.namelist()):
                return f"{path.name} is not a torch file"
    except (zipfile.BadZipFile, OSError) as err:
        return f"{path.name} is damaged ({err})"
    return None


def checkpoint_problem(path: Path) -> Optional[str]:
    """What makes a checkpoint folder unusable for a resume (a missing or unreadable file), or None.

    Checked before anything is loaded: state.json (valid JSON with the train state), the weights'
    safetensors header, and the torch files' archive index.
    """
    for name in (STATE_FILE, TRAINER_FILE):
        if not (path / name).is_file():
            return f"{name} is missing"
    try:
        record = json.loads((path / STATE_FILE).read_text())
        if not isinstance(record, dict) or not isinstance(record.get("state"), dict) or \
                not isinstance(record.get("identity"), dict):
            return f"{STATE_FILE} lacks the train state"
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        return f"{STATE_FILE} is not readable JSON ({err})"
    if "shards" in record:
        problem = manifest_problem(path / SHARDED_DIR, record["shards"])
    else:
        problem = weights_problem(path / WEIGHTS_FILE)
    if problem:
        return problem
    for file in [path / TRAINER_FILE, *sorted(path.glob("rng_*.pt"))]:
        problem = _torch_file_problem(file)
        if problem:
            return problem
    return None


def resolve_checkpoint(spec: Optional[str], output_dir: str | Path,
                       note: Optional[Callable[[str], None]] = None) -> Optional[Path]:
    """Turn `--resume_from_checkpoint auto|latest|PATH` into a verified checkpoint folder, or raise UserError.

    None (no resume) and `auto` without a usable checkpoint give None: start from scratch. `auto`
    passes over damaged checkpoints to the newest usable one and says so through `note`; `latest`
    and a path name a damaged checkpoint and stop.
    """
    if spec is None:
        return None
    if spec == "auto":
        for path in reversed(list_checkpoints(output_dir)):
            problem = checkpoint_problem(path)
            if problem is None:
                return path
            if note:
                note(f"note: --resume_from_checkpoint auto: skipping the damaged checkpoint {path} ({problem})")
        return None
    if spec == "latest":
        found = list_checkpoints(output_dir)
        if not found:
            raise FlagError("resume_from_checkpoint", f"latest: no complete checkpoint in {checkpoint_root(output_dir)}")
        problem = checkpoint_problem(found[-1])
        if problem:
            raise FlagError("resume_from_checkpoint", f"latest: the newest checkpoint {str(found[-1])!r} is damaged "
                            f"({problem}); use --resume_from_checkpoint auto to resume from the newest undamaged "
                            f"one, or remove it")
        return found[-1]
    path = Path(spec)
    if not path.is_dir():
        raise FlagError("resume_from_checkpoint", f"{spec!r} does not exist (give a checkpoint folder, 'latest' "
                        f"or 'auto')")
    if not (path / STATE_FILE).is_file() or not ((path / WEIGHTS_FILE).is_file() or (path / SHARDED_DIR).is_dir()):
        raise FlagError("resume_from_checkpoint", f"{spec!r} is incomplete (no {STATE_FILE}, or neither {WEIGHTS_FILE} "
                        f"nor {SHARDED_DIR}/)")
    problem = checkpoint_problem(path)
    if problem:
        raise FlagError("resume_from_checkpoint", f"{spec!r} is damaged ({problem}); give another checkpoint "
                        f"folder, or 'auto' for the newest undamaged one")
    return path


# Flags whose values a resume takes from the checkpoint (the optimizer's state holds them): a resume that asks
# for other values is refused rather than silently keeping the old ones. The schedule's flags (--max_steps,
# --num_train_epochs, warmup, --lr_scheduler_type), the loss's and clipping are applied as given.
KEPT_FROM_CHECKPOINT = ("optim", "learning_rate", "weight_decay", "momentum")


def run_identity(plan: Any, config: Any, sources: Optional[dict] = None) -> dict[str, Any]:
    """What a resumed run must share with the checkpoint: for the data order to continue unchanged, the effective
    batch, the seed, the number of training samples and the training files' content (framework.data.identity);
    and the optimizer's flags that the checkpoint's optimizer state would keep (KEPT_FROM_CHECKPOINT)."""
    identity: dict[str, Any] = {"effective_batch": plan.effective_batch, "seed": config.seed,
                                "train_samples": plan.num_samples}
    identity.update({name: getattr(config, name) for name in KEPT_FROM_CHECKPOINT if hasattr(config, name)})
    if sources:
        identity["train_data"] = training_identity(sources)
        identity["_sources"] = sources  # for the refusal's wording; not saved
    return identity


def _fsync(path: Path) -> None:
    """Flush a file or a folder (its entries) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _discard_and_raise(tmp: Path, err: Exception) -> None:
    """Remove a checkpoint folder whose writing failed, and raise. torch.save reports a full disk as a bare
    RuntimeError ("iostream error", no errno): the folder's filesystem is asked first (nearly no room left, or
    read-only), so the error says what happened (framework.core.errors.write_failure)."""
    cause = None
    try:
        stats = os.statvfs(tmp.parent)
        if stats.f_flag & os.ST_RDONLY:
            cause = errno.EROFS
        elif stats.f_bavail * stats.f_frsize < (1 << 20):
            cause = errno.ENOSPC
    except OSError:
        pass
    shutil.rmtree(tmp, ignore_errors=True)
    if cause is not None and not isinstance(err, OSError):
        raise OSError(cause, os.strerror(cause), str(tmp)) from err
    raise err


def save_checkpoint(accelerator: Accelerator, output_dir: str | Path, *, model: torch.nn.Module,
                    parts: Mapping[str, Any], state: Any, identity: dict[str, Any], save_total_limit: int = 0) -> Path:
    """Write `checkpoints/step_<state.step>` atomically on every process; returns its path. `parts` are the named
    stateful parts beside the weights (the optimizer, the scheduler, the grad scaler, a component's): each one's
    `state_dict()` goes into trainer.pt under its name. Under FSDP the weights and the optimizer are written
    sharded, each process its own part (framework.io.sharded); nothing is gathered."""
    root = checkpoint_root(output_dir)
    final = root / f"step_{state.step}"
    tmp = root / f".tmp_step_{state.step}"
    sharded = accelerator.distributed_type == DistributedType.FSDP
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    whole_parts = {name: part for name, part in parts.items() if not (sharded and name == "optimizer")}
    try:
        if sharded:  # a collective: every process writes its shard
            save_sharded(bare_model(accelerator, model), parts["optimizer"], tmp / SHARDED_DIR)
        else:
            model_state = model_state_dict(accelerator, model)
        rng_file = tmp / f"rng_{accelerator.process_index}.pt"
        torch.save(capture_rng_state(), rng_file)
        _fsync(rng_file)
        if accelerator.is_main_process:
            if not sharded:
                save_file(model_state, str(tmp / WEIGHTS_FILE))
                umask_mode(tmp / WEIGHTS_FILE)
            torch.save({name: part.state_dict() for name, part in whole_parts.items()}, tmp / TRAINER_FILE)
    except Exception as err:  # a full disk: the half-written folder goes (it frees the space), the earlier ones stay
        _discard_and_raise(tmp, err)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        identity = {k: v for k, v in identity.items() if not k.startswith("_")}
        record = {"state": dataclasses.asdict(state), "identity": identity,
                  "world_size": accelerator.num_processes}
        if sharded:
            record["shards"] = shard_manifest(tmp / SHARDED_DIR)
        try:
            (tmp / STATE_FILE).write_text(json.dumps(record, indent=2) + "\n")
        except Exception as err:
            _discard_and_raise(tmp, err)
        # Durable before visible: a power cut after the rename must not leave a "complete" checkpoint
        # whose files never reached the disk.
        for file in [*tmp.iterdir(), *(tmp / SHARDED_DIR).glob("*")]:
            _fsync(file)
        _fsync(tmp)
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        _fsync(root)
        if save_total_limit > 0:
            for old in list_checkpoints(output_dir)[:-save_total_limit]:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def _check_model_shapes(path: Path, model_state: dict[str, torch.Tensor]) -> None:
    if (path / SHARDED_DIR).is_dir():
        saved = sharded_shapes(path / SHARDED_DIR)
    else:
        with safe_open(str(path / WEIGHTS_FILE), framework="pt") as handle:
            saved = {k: tuple(handle.get_slice(k).get_shape()) for k in handle.keys()}
    current = {k: tuple(v.shape) for k, v in model_state.items()}
    if saved != current:
        differing = sorted(set(saved.items()) ^ set(current.items()))
        name = differing[0][0] if differing else "?"
        raise UserError(f"checkpoint {str(path)!r} is for another model: parameter {name!r} is "
                        f"{saved.get(name, 'absent')} there and {current.get(name, 'absent')} here")


def load_checkpoint(accelerator: Accelerator, path: Path, *, model: torch.nn.Module, parts: Mapping[str, Any],
                    identity: dict[str, Any], state_type: type) -> Any:
    """Restore the model, the named `parts` (see `save_checkpoint`) and the RNGs from `path`; returns the saved
    train state. A part the checkpoint has no state for (the grad scaler of a run that was fp32) stays as it is.

    Refuses (UserError) a checkpoint of another model shape, effective batch, seed or dataset size.
    """
    record = json.loads((path / STATE_FILE).read_text())
    sources = identity.get("_sources", {})
    problem = identity_problem(record["identity"].get("train_data"), identity.get("train_data", {}), sources)
    if problem:
        raise UserError(f"checkpoint {str(path)!r} is of a run on other training data: {problem}; resuming would "
                        f"continue the old run on new data: start a new run (--overwrite_output_dir true, or "
                        f"another --output_dir)")
    for key, value in identity.items():
        if key.startswith("_") or key == "train_data":
            continue
        if key in KEPT_FROM_CHECKPOINT and key in record["identity"] and record["identity"][key] != value:
            raise FlagError(key, f"{value} differs from the checkpoint {str(path)!r} ({record['identity'][key]}); a "
                            f"resume continues with the checkpoint's optimizer state, so pass the same value, or "
                            f"start a new run for the new one")
        if key not in KEPT_FROM_CHECKPOINT and record["identity"].get(key) != value:
            raise UserError(f"checkpoint {str(path)!r} was made with {key}={record['identity'].get(key)}, "
                            f"this run has {key}={value}; resuming would not continue the same run")
    unwrapped = bare_model(accelerator, model)
    _check_model_shapes(path, unwrapped.state_dict())
    trainer = torch.load(path / TRAINER_FILE, map_location="cpu", weights_only=True)
    if "shards" in record:  # weights and optimizer resharded to this run's processes (FSDP or not)
        load_sharded(unwrapped, parts["optimizer"], path / SHARDED_DIR)
        parts = {name: part for name, part in parts.items() if name != "optimizer"}
    else:
        with safe_open(str(path / WEIGHTS_FILE), framework="pt", device="cpu") as handle:
            weights = {k: handle.get_tensor(k) for k in handle.keys()}
        if accelerator.distributed_type == DistributedType.FSDP:  # each process keeps its shard of the whole
            load_full_into_sharded(unwrapped, parts["optimizer"], weights, trainer.pop("optimizer"))
            parts = {name: part for name, part in parts.items() if name != "optimizer"}
        else:
            unwrapped.load_state_dict(weights)
    for name, part in parts.items():
        if trainer.get(name):
            part.load_state_dict(trainer[name])
    rng_file = path / f"rng_{accelerator.process_index}.pt"
    if rng_file.is_file():
        restore_rng_state(torch.load(rng_file, weights_only=True))
    try:
        return state_type(**record["state"])
    except TypeError:
        raise UserError(f"checkpoint {str(path)!r} was written by another version of the framework (its "
                        f"{STATE_FILE} has other fields); resume it with that version") from None


def should_checkpoint(every: Optional[int | str], step: int) -> bool:
    """Whether `--checkpointing_steps N` asks for a checkpoint after optimizer step `step` ('epoch' checkpoints at
    the end of each epoch instead, which the caller knows)."""
    return isinstance(every, int) and every > 0 and step % every == 0
