"""FSDP2 on a machine without GPUs (framework.core.sharding): accelerate_configs/fsdp.yaml on 2 CPU processes trains
sharded over gloo through Accelerate's own FSDP2 code, trains the model one plain process trains, and checkpoints
sharded (framework.io.sharded): each process writes its own shard, a kill or a truncated shard loses nothing, and a
checkpoint resumes on another number of processes, with or without FSDP."""

from __future__ import annotations

import csv
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

from helpers import (
    CONFIGS,
    DIGITS,
    IMAGES,
    TEXT,
    debug_launch,
    fit_model,
    launch,
    max_abs_diff,
    read_json,
    read_metrics,
    run_and_kill_after,
    run_digits_in_group,
    run_digits_in_process,
    run_script_in_group,
    run_script_in_process,
    tiny_pretrained_bert,
    weights,
)

# 20 steps, a checkpoint every 10, the default dropout on (every RNG must come back)
STEPS = ["--max_steps", "20", "--mixed_precision", "no", "--seed", "7", "--checkpointing_steps", "10",
         "--do_predict", "true"]
FSDP_ARGS = [*STEPS, "--per_device_train_batch_size", "16"]  # 2 x 16
PLAIN_ARGS = [*STEPS, "--per_device_train_batch_size", "32"]  # 1 x 32
ACCELERATE = str(Path(sys.executable).with_name("accelerate"))
SHARD_FILES = [".metadata", "__0_0.distcp", "__1_0.distcp"]  # the index, and one shard per process


def _fsdp_command(out: Path, *extra: str) -> list[str]:
    return [ACCELERATE, "launch", "--config_file", str(CONFIGS / "fsdp.yaml"), "--num_processes", "2", str(DIGITS),
            "--output_dir", str(out), *FSDP_ARGS, *extra]


def _predictions(run: Path) -> list[dict]:
    with open(run / "predictions.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def _copy_checkpoints(run: Path, to: Path, *steps: int) -> None:
    for step in steps:
        shutil.copytree(run / "checkpoints" / f"step_{step}", to / "checkpoints" / f"step_{step}")


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """The same 20 steps sharded on 2 processes with fsdp.yaml's settings (a forked gloo group: no launcher;
    the launch test below shows a launch trains the same bits) and on one plain process, made once."""
    root = tmp_path_factory.mktemp("fsdp")
    run_digits_in_group(root / "fsdp", *FSDP_ARGS, fsdp=True)
    assert run_digits_in_process(root / "plain", *PLAIN_ARGS) == 0
    return {"fsdp": root / "fsdp", "plain": root / "plain"}


def test_fsdp_trains_evaluates_and_predicts_digits_as_one_process_and_checkpoints_a_shard_per_process(runs):
    sharded, plain = runs["fsdp"], runs["plain"]
    summary = read_json(sharded / "summary.json")
    assert summary["world_size"] == 2 and summary["sharding"] == "FSDP2, parameters sharded over 2 processes"
    assert max_abs_diff(sharded, plain) < 5e-5  # 2 x 16 sharded == 1 x 32, default dropout on
    # Evaluation and prediction: every held-out sample once, as one process reports and predicts them
    report, plain_report = read_json(sharded / "report.json"), read_json(plain / "report.json")
    assert report["accuracy"] == plain_report["accuracy"] and report["macro avg"]["support"] == 360
    assert report["macro avg"] == pytest.approx(plain_report["macro avg"], abs=1e-12)
    predicted, plain_predicted = _predictions(sharded), _predictions(plain)
    assert [(p["id"], p["prediction"]) for p in predicted] == [(p["id"], p["prediction"]) for p in plain_predicted]
    assert [float(p["score"]) for p in predicted] == pytest.approx([float(p["score"]) for p in plain_predicted],
                                                                   abs=1e-4)
    # Each checkpoint: one shard per process and the index, listed with sizes and hashes; no whole weights.
    for step in (10, 20):
        checkpoint = sharded / "checkpoints" / f"step_{step}"
        assert sorted(p.name for p in (checkpoint / "sharded").iterdir()) == SHARD_FILES
        assert not (checkpoint / "model.safetensors").exists()
        listed = read_json(checkpoint / "state.json")["shards"]
        assert sorted(listed) == SHARD_FILES
        assert all(listed[name]["bytes"] == (checkpoint / "sharded" / name).stat().st_size for name in listed)
    shards = [(sharded / "checkpoints" / "step_10" / "sharded" / f"__{rank}_0.distcp").stat().st_size
              for rank in (0, 1)]
    whole = (plain / "checkpoints" / "step_10" / "model.safetensors").stat().st_size
    assert max(shards) < whole * 3 * 0.75  # each holds about half of the weights and the two Adam moments


@pytest.mark.slow
def test_the_fsdp_config_trains_digits_sharded_on_two_cpu_processes(runs, tmp_path):
    """`accelerate launch --config_file accelerate_configs/fsdp.yaml --num_processes 2`: sharded over gloo, and
    bit for bit the run of the forked group with the same settings that the other tests here use."""
    launched = tmp_path / "launched"
    result = launch(_fsdp_command(launched))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "sharding FSDP2, parameters sharded over 2 processes" in result.stdout  # the banner
    assert read_json(launched / "summary.json")["sharding"] == "FSDP2, parameters sharded over 2 processes"
    assert sorted(p.name for p in (launched / "checkpoints" / "step_10" / "sharded").iterdir()) == SHARD_FILES
    assert max_abs_diff(launched, runs["fsdp"]) == 0.0
    assert read_json(launched / "report.json") == read_json(runs["fsdp"] / "report.json")


@pytest.mark.slow
def test_a_killed_fsdp_launch_resumes_bitwise_from_its_shards(runs, tmp_path, capfd):
    out = tmp_path / "killed"
    code = run_and_kill_after(_fsdp_command(out, "--resume_from_checkpoint", "auto"), out, 10)
    assert code != 0 and not (out / "summary.json").exists(), "the run finished before the kill"
    # The same run on the same 2 processes and fsdp.yaml's settings, resumed (in a forked group: no launcher)
    capfd.readouterr()
    run_digits_in_group(out, *FSDP_ARGS, "--resume_from_checkpoint", "auto", fsdp=True)
    assert "resumed from" in capfd.readouterr().out
    assert max_abs_diff(runs["fsdp"], out) == 0.0  # bitwise equal to the uninterrupted launch


def test_a_two_process_fsdp_checkpoint_resumes_on_one_plain_process(runs, tmp_path, capfd):
    out = tmp_path / "one"
    _copy_checkpoints(runs["fsdp"], out, 10)
    assert run_digits_in_process(out, *PLAIN_ARGS, "--resume_from_checkpoint", "auto") == 0
    assert f"resumed from {out / 'checkpoints' / 'step_10'}" in capfd.readouterr().out
    assert max_abs_diff(runs["fsdp"], out) <= 1e-5
    assert sorted(weights(out)) == sorted(weights(runs["plain"]))  # the plain run's names


def test_a_one_process_checkpoint_resumes_sharded_on_two_fsdp_processes(runs, tmp_path, capfd):
    out = tmp_path / "two"
    _copy_checkpoints(runs["plain"], out, 10)
    run_digits_in_group(out, *FSDP_ARGS, "--resume_from_checkpoint", "auto", fsdp=True)
    assert "resumed from" in capfd.readouterr().out
    assert read_json(out / "summary.json")["sharding"] == "FSDP2, parameters sharded over 2 processes"
    assert max_abs_diff(runs["plain"], out) <= 1e-5
    assert sorted(p.name for p in (out / "checkpoints" / "step_20" / "sharded").iterdir()) == SHARD_FILES


def test_a_truncated_shard_is_named_in_one_line_and_auto_passes_over_it(runs, tmp_path, capsys):
    out = tmp_path / "run"
    _copy_checkpoints(runs["fsdp"], out, 10, 20)
    shard = out / "checkpoints" / "step_20" / "sharded" / "__1_0.distcp"
    shard.write_bytes(shard.read_bytes()[:1000])
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    capsys.readouterr()
    assert run_digits_in_process(out, *PLAIN_ARGS, "--resume_from_checkpoint", "latest") == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "sharded/__1_0.distcp is 1000 bytes" in lines[0]
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before  # nothing written or lost
    assert run_digits_in_process(out, *PLAIN_ARGS, "--resume_from_checkpoint", "auto") == 0
    said = capsys.readouterr().out
    assert "skipping the damaged checkpoint" in said and f"resumed from {out / 'checkpoints' / 'step_10'}" in said
    assert max_abs_diff(runs["fsdp"], out) <= 1e-5


def test_a_changed_shard_of_the_same_size_is_refused(runs, tmp_path, capsys):
    checkpoint = tmp_path / "step_20"
    shutil.copytree(runs["fsdp"] / "checkpoints" / "step_20", checkpoint)
    shard = checkpoint / "sharded" / "__0_0.distcp"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte in the middle of a tensor
    shard.write_bytes(bytes(data))
    assert run_digits_in_process(tmp_path / "out", *PLAIN_ARGS, "--resume_from_checkpoint", str(checkpoint)) == 2
    assert "sharded/__0_0.distcp has other content than was written" in capsys.readouterr().err


def test_the_fsdp_runs_weights_evaluate_the_same_on_one_plain_process(runs, tmp_path):
    assert run_digits_in_process(tmp_path, "--do_train", "false", "--model_path", str(runs["fsdp"]),
                                 "--mixed_precision", "no") == 0
    own, plain = read_json(runs["fsdp"] / "report.json"), read_json(tmp_path / "report.json")
    assert plain["accuracy"] == own["accuracy"]
    assert plain["macro avg"] == pytest.approx(own["macro avg"], rel=1e-9)


# Accumulation, clipping, warmup and class weights on; the recipes' default dropout on; fp32.
EQUAL = ["--gradient_accumulation_steps", "2", "--max_grad_norm", "0.5", "--warmup_steps", "3",
         "--class_weights", "balanced", "--mixed_precision", "no", "--seed", "5"]


def _recipe_args(name: str, image_folders: Path, text_files: Path, cancer_csv: Path) -> tuple[Path, list[str]]:
    """The recipe file and its data flags, a short run of each."""
    if name == "image":
        return IMAGES, ["--train_dir", str(image_folders / "train"), "--validation_dir", str(image_folders / "valid"),
                        "--num_train_epochs", "1", "--channels", "8", "--groups", "4", "--augment", "crop,flip"]
    if name == "text":
        # SGD, not AdamW: the attention's key bias has a true gradient of exactly zero (a softmax ignores a shift
        # of all its logits), so AdamW turns its rounding noise into steps of about the learning rate. Measured
        # with AdamW, 1 process against 2: 6.0e-5 under DDP, 4.9e-5 under FSDP in that tensor, at most 1.2e-7 in
        # every other; with SGD 1.2e-7 in all. AdamW under FSDP is compared in the other three recipes.
        return TEXT, ["--train_file", str(text_files / "train.csv"), "--validation_file", str(text_files / "valid.csv"),
                      "--model", "transformer", "--d_model", "32", "--num_layers", "1", "--max_length", "32",
                      "--max_steps", "12", "--optim", "sgd", "--learning_rate", "0.05"]
    return cancer_csv / "tabular.py", ["--train_file", str(cancer_csv / "train.csv"), "--validation_file",
                                       str(cancer_csv / "valid.csv"), "--num_train_epochs", "2"]


@pytest.mark.slow  # whole recipes, 6 runs
@pytest.mark.parametrize("name", ["image", "text", "own"], ids=["image", "text_encoder", "readme_recipe"])
def test_fsdp_trains_each_recipe_as_one_process_does(name, tmp_path, image_folders, text_files, cancer_csv):
    script, args = _recipe_args(name, image_folders, text_files, cancer_csv)
    run_script_in_group(script, *args, *EQUAL, "--per_device_train_batch_size", "8", "--output_dir",
                        str(tmp_path / "fsdp"), fsdp=True)  # 2 processes x 8 x 2 accumulation
    assert run_script_in_process(script, *args, *EQUAL, "--per_device_train_batch_size", "16", "--output_dir",
                                 str(tmp_path / "plain")) == 0  # 1 x 16 x 2
    assert read_json(tmp_path / "fsdp" / "summary.json")["sharding"] == "FSDP2, parameters sharded over 2 processes"
    assert max_abs_diff(tmp_path / "fsdp", tmp_path / "plain") < 5e-5
    fsdp_report, plain_report = read_json(tmp_path / "fsdp" / "report.json"), read_json(tmp_path / "plain" / "report.json")
    assert fsdp_report["macro avg"]["support"] == plain_report["macro avg"]["support"]  # every sample once
    assert fsdp_report["accuracy"] == plain_report["accuracy"]


class _InfGradientAt(torch.autograd.Function):
    """Identity forward; backward puts inf into element 0 of the gradient when told to."""

    @staticmethod
    def forward(ctx, tensor, poison: bool):
        ctx.poison = poison
        return tensor.view_as(tensor)

    @staticmethod
    def backward(ctx, grad):
        if ctx.poison:
            grad = grad.clone()
            grad[0] = float("inf")
        return grad, None


class _OverflowingMLP(torch.nn.Module):
    """An MLP whose `offset` (64 zeros, no effect on the output) gets an inf gradient in its element 0 on rank 1's
    training batches `at`. Under FSDP that element is in rank 0's shard: only rank 0 sees the overflow, unless
    the ranks agree on it."""

    def __init__(self, at: set[int]):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(10, 16), torch.nn.GELU(), torch.nn.Linear(16, 3))
        self.offset = torch.nn.Parameter(torch.zeros(64))
        self.at, self.batches = at, 0

    def forward(self, x):
        from accelerate import PartialState

        if self.training:
            self.batches += 1
        poison = self.training and self.batches in self.at and PartialState().process_index == 1
        return self.net(x) + _InfGradientAt.apply(self.offset, poison).sum() * 0


def _fp16_with_overflows(out: Path) -> None:
    from datasets import Dataset

    from framework import TrainingConfig

    g = torch.Generator().manual_seed(0)
    data = Dataset.from_dict({"x": torch.randn(64, 10, generator=g).numpy(),
                              "labels": torch.randint(0, 3, (64,), generator=g).numpy()}).with_format("torch")
    config = TrainingConfig(output_dir=str(out), mixed_precision="fp16", per_device_train_batch_size=8, max_steps=8,
                            logging_steps=1, warmup_ratio=0.0, learning_rate=0.01)
    accelerator, result = fit_model(config, lambda: _OverflowingMLP({3, 6}), data, data, ["a", "b", "c"])
    from torch.distributed.tensor import DTensor

    offset = result.model.offset
    (out / f"rank_{accelerator.process_index}.json").write_text(json.dumps(
        {"skipped": result.summary["skipped_fp16_steps"], "scale": accelerator.scaler.get_scale(),
         "every_parameter_a_dtensor": all(isinstance(p, DTensor) for p in result.model.parameters()),
         "offset_shard": list(offset.to_local().shape) if isinstance(offset, DTensor) else None}))


def test_fp16_under_fsdp_skips_an_overflow_that_only_one_shard_sees_on_every_process(tmp_path):
    debug_launch(_fp16_with_overflows, tmp_path, fsdp=True)
    summary = read_json(tmp_path / "summary.json")
    assert summary["mixed_precision"] == "fp16" and summary["sharding"].startswith("FSDP2")
    ranks = [read_json(tmp_path / f"rank_{rank}.json") for rank in (0, 1)]
    # sharded: every parameter a DTensor, each process holding half of the 64-element offset
    assert all(r["every_parameter_a_dtensor"] and r["offset_shard"] == [32] for r in ranks)
    assert ranks[0] == ranks[1] and ranks[0]["skipped"] == 2  # both processes skipped both steps, scale halved
    lrs = [r["lr"] for r in read_metrics(tmp_path) if "lr" in r]
    assert [i for i in range(len(lrs) - 1) if lrs[i] == lrs[i + 1]] == [2, 5]  # the skipped steps kept their lr


@pytest.mark.slow  # a transformers model fine-tuned
def test_a_pretrained_fine_tune_under_fsdp_exports_a_model_transformers_loads(tmp_path, text_files):
    """The transformers export is written from the run's whole weights: under FSDP no process holds the whole
    model (the model's own save_pretrained would read its shards)."""
    transformers = pytest.importorskip("transformers")
    tiny_pretrained_bert(tmp_path)
    out = tmp_path / "out"
    run_script_in_group(TEXT, "--train_file", str(text_files / "train.csv"), "--validation_file",
                        str(text_files / "valid.csv"), "--model_name_or_path", str(tmp_path), "--output_dir", str(out),
                        "--max_steps", "10", "--per_device_train_batch_size", "8", "--learning_rate", "2e-3",
                        "--max_length", "32", "--mixed_precision", "no", "--do_predict", "true", "--test_file",
                        str(text_files / "valid.csv"), fsdp=True)
    assert read_json(out / "summary.json")["sharding"] == "FSDP2, parameters sharded over 2 processes"
    model = transformers.AutoModelForSequenceClassification.from_pretrained(out).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    assert model.config.id2label == {0: "food", 1: "sports", 2: "tech"}
    rows = _predictions(out)
    with open(text_files / "valid.csv", newline="") as handle:
        texts = [row["text"] for row in csv.DictReader(handle)]
    with torch.no_grad():
        logits = model(**tokenizer(texts, padding=True, truncation=True, max_length=32, return_tensors="pt")).logits
    assert [model.config.id2label[i] for i in logits.argmax(-1).tolist()] == [r["prediction"] for r in rows]


@pytest.mark.slow  # two more runs
def test_the_best_evaluation_is_kept_and_loaded_back_under_fsdp(tmp_path):
    """--load_best_model_at_end: the best weights are gathered whole into best/ and put back into the sharded
    model at the end (each process keeping its shard), as one process does; a checkpoint written right after an
    evaluation (when FSDP keeps the root's parameters gathered) resumes bitwise."""
    args = ["--max_steps", "40", "--eval_steps", "10", "--checkpointing_steps", "10", "--metric_for_best_model",
            "eval_accuracy", "--load_best_model_at_end", "true", "--mixed_precision", "no"]
    run_digits_in_group(tmp_path / "fsdp", *args, "--per_device_train_batch_size", "16", fsdp=True)
    assert run_digits_in_process(tmp_path / "plain", *args, "--per_device_train_batch_size", "32") == 0
    sharded, plain = read_json(tmp_path / "fsdp" / "summary.json"), read_json(tmp_path / "plain" / "summary.json")
    assert sharded["best_step"] == plain["best_step"] and sharded["eval_accuracy"] == plain["eval_accuracy"]
    assert max_abs_diff(tmp_path / "fsdp", tmp_path / "plain") < 5e-5  # the best step's weights, on both
    assert max_abs_diff(tmp_path / "fsdp", tmp_path / "fsdp" / "best") == 0.0
    _copy_checkpoints(tmp_path / "fsdp", tmp_path / "resumed", 20)
    shutil.copytree(tmp_path / "fsdp" / "best", tmp_path / "resumed" / "best")  # a stopped run keeps its best/ too
    run_digits_in_group(tmp_path / "resumed", *args, "--per_device_train_batch_size", "16", "--resume_from_checkpoint",
                        "auto", fsdp=True)
    assert max_abs_diff(tmp_path / "fsdp", tmp_path / "resumed") == 0.0


def test_size_based_auto_wrap_gives_each_large_block_a_unit_and_never_a_container(monkeypatch):
    """fsdp.yaml's size rule (1M parameters) on a transformer whose layers are larger: each layer is a unit;
    the nn.ModuleList holding them (no forward: fully_shard refuses it) and the attention's output projection
    (its parent reads the weight directly) are not, which Accelerate's own FSDP2 size rule picked."""
    import sys

    from accelerate import FullyShardedDataParallelPlugin
    from accelerate.utils.fsdp_utils import fsdp2_prepare_auto_wrap_policy

    from framework.core.sharding import wrap_blocks_not_containers

    sys.path.insert(0, str(DIGITS.parent))
    from text.models import TextEncoder

    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    plugin = FullyShardedDataParallelPlugin(fsdp_version=2, auto_wrap_policy="size_based_wrap",
                                            min_num_params=1_000_000)
    model = TextEncoder(100, 3, d_model=320, num_layers=2, num_heads=4, max_length=16, dropout=0.1)
    accelerator = type("Accelerator", (), {"state": type("State", (), {"fsdp_plugin": plugin})()})()
    wrap_blocks_not_containers(accelerator, model)
    assert plugin.transformer_cls_names_to_wrap == ["EncoderLayer"]
    policy = fsdp2_prepare_auto_wrap_policy(plugin, model)
    units = [name for name, module in model.named_modules() if policy(module)]
    assert units == ["encoder.layers.0", "encoder.layers.1"]  # each over 1M parameters; nothing else


@pytest.mark.slow  # layers of 1.2M parameters
def test_a_transformer_with_layers_above_the_wrap_size_trains_under_fsdp_as_one_process(tmp_path, text_files):
    args = ["--train_file", str(text_files / "train.csv"), "--validation_file", str(text_files / "valid.csv"),
            "--model", "transformer", "--d_model", "320", "--num_layers", "2", "--num_heads", "4", "--max_length",
            "16", "--max_steps", "3", "--optim", "sgd", "--learning_rate", "0.05", "--mixed_precision", "no",
            "--baseline", "false"]  # SGD: see _recipe_args
    run_script_in_group(TEXT, *args, "--per_device_train_batch_size", "8", "--output_dir", str(tmp_path / "fsdp"),
                        fsdp=True)
    assert run_script_in_process(TEXT, *args, "--per_device_train_batch_size", "16", "--output_dir",
                                 str(tmp_path / "plain")) == 0
    assert read_json(tmp_path / "fsdp" / "summary.json")["sharding"] == "FSDP2, parameters sharded over 2 processes"
    assert max_abs_diff(tmp_path / "fsdp", tmp_path / "plain") < 5e-5
