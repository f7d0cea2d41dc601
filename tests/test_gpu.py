"""GPU-only checks of the fp16 path (skipped without CUDA; run by scripts/gpu_check.sh)."""

from __future__ import annotations

import pytest
import torch

from framework.train.loop import NonFiniteLossError

from helpers import fit_model, inject_inf, read_json, read_metrics, run_digits_in_process

pytestmark = pytest.mark.gpu


def _digits(tmp_path, **overrides):
    from recipes import digits

    config = digits.DigitsConfig(output_dir=str(tmp_path), mixed_precision="fp16", **overrides)
    train_set, test_set, names = digits.load_splits(config)
    return config, lambda: digits.DigitsCNN(config.channels, len(names), config.dropout), train_set, test_set, names


def test_fp16_really_uses_autocast_and_a_grad_scaler(tmp_path):
    config, make_model, train_set, test_set, names = _digits(tmp_path, max_steps=3)
    dtypes = []

    def with_hook():
        model = make_model()
        model.features[0].register_forward_hook(lambda module, args, out: dtypes.append(out.dtype))
        return model

    accelerator, result = fit_model(config, with_hook, train_set, test_set, names)
    assert result.summary["mixed_precision"] == "fp16"
    assert torch.float16 in dtypes  # convolutions ran in fp16 under autocast
    assert isinstance(accelerator.scaler, torch.amp.GradScaler)
    assert accelerator.scaler.is_enabled()


def test_inf_gradient_skips_the_step_without_advancing_the_schedule(tmp_path):
    config, make_model, train_set, test_set, names = _digits(tmp_path, max_steps=30, warmup_ratio=0.0,
                                                             logging_steps=1)
    _, result = fit_model(config, inject_inf(make_model, {20}), train_set, test_set, names)
    lrs = [r["lr"] for r in read_metrics(tmp_path) if "lr" in r]
    repeats = sum(1 for a, b in zip(lrs, lrs[1:]) if a == b)
    skipped = result.summary["skipped_fp16_steps"]
    assert skipped >= 1
    assert repeats == skipped  # every skipped step left the lr where it was; every applied one moved it
    assert lrs[19] == lrs[20]  # the injected step


def test_too_many_consecutive_skips_stop_the_run(tmp_path):
    config, make_model, train_set, test_set, names = _digits(tmp_path, max_steps=40,
                                                             max_consecutive_skipped_steps=5)
    with pytest.raises(NonFiniteLossError, match="fp16 steps in a row were skipped"):
        fit_model(config, inject_inf(make_model, set(range(10, 100))), train_set, test_set, names)


def test_fp16_and_fp32_digits_accuracy_within_one_point(tmp_path):
    assert run_digits_in_process(tmp_path / "fp16", "--mixed_precision", "fp16") == 0
    assert run_digits_in_process(tmp_path / "fp32", "--mixed_precision", "no") == 0
    fp16 = read_json(tmp_path / "fp16" / "report.json")["accuracy"]
    fp32 = read_json(tmp_path / "fp32" / "report.json")["accuracy"]
    assert read_json(tmp_path / "fp16" / "summary.json")["mixed_precision"] == "fp16"
    assert abs(fp16 - fp32) <= 0.01
    assert fp16 >= 0.95


def test_fsdp_config_trains_digits(tmp_path):
    # Accelerate's FSDP does not run on a CPU, so this is GPU-only; one GPU is a one-process FSDP group.
    import sys

    from helpers import CONFIGS, DIGITS, launch

    result = launch([sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                     str(CONFIGS / "fsdp.yaml"), "--num_processes", str(torch.cuda.device_count()),
                     str(DIGITS), "--output_dir", str(tmp_path)], timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = read_json(tmp_path / "summary.json")
    assert summary["mixed_precision"] == "fp16"
    assert read_json(tmp_path / "report.json")["accuracy"] >= 0.95


def test_fsdp_on_gpus_checkpoints_sharded_resumes_bitwise_and_offloads_to_the_cpu(tmp_path):
    """fsdp.yaml on every GPU (NCCL, fp16 with its GradScaler): sharded checkpoints resume bitwise, and parameter
    CPU offload (for one memory-limited GPU) trains the same steps."""
    import shutil
    import sys

    from helpers import CONFIGS, DIGITS, launch, max_abs_diff

    def train(out, *extra, launcher=()):
        done = launch([sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIGS / "fsdp.yaml"),
                       "--num_processes", str(torch.cuda.device_count()), *launcher, str(DIGITS), "--output_dir",
                       str(out), "--max_steps", "40", "--checkpointing_steps", "20", *extra], timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        return read_json(out / "summary.json")

    summary = train(tmp_path / "full")
    assert summary["mixed_precision"] == "fp16" and summary["sharding"].startswith("FSDP2")
    checkpoint = tmp_path / "full" / "checkpoints" / "step_20"
    assert (checkpoint / "sharded" / ".metadata").is_file() and not (checkpoint / "model.safetensors").exists()
    shutil.copytree(checkpoint, tmp_path / "resumed" / "checkpoints" / "step_20")
    train(tmp_path / "resumed", "--resume_from_checkpoint", "latest")
    assert max_abs_diff(tmp_path / "full", tmp_path / "resumed") == 0.0
    offloaded = train(tmp_path / "offloaded", launcher=["--fsdp_offload_params", "true"])
    assert offloaded["optimizer_steps"] == 40 and offloaded["mixed_precision"] == "fp16"
    assert abs(offloaded["eval_accuracy"] - summary["eval_accuracy"]) <= 0.02


def test_compiled_fp16_digits_matches_eager(tmp_path):
    """--torch_compile on CUDA (Triton kernels) with fp16 loss scaling: same accuracy, plain weight names."""
    import sys

    from helpers import DIGITS, launch, weights

    runs = {}
    for name, extra in (("eager", []), ("compiled", ["--torch_compile"])):
        out = tmp_path / name
        done = launch([sys.executable, str(DIGITS), "--output_dir", str(out), "--mixed_precision", "fp16", *extra],
                      timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        runs[name] = out
    assert read_json(runs["compiled"] / "summary.json")["torch_compile"] == "inductor (mode default)"
    assert weights(runs["compiled"]).keys() == weights(runs["eager"]).keys()
    accuracy = {name: read_json(out / "report.json")["accuracy"] for name, out in runs.items()}
    assert abs(accuracy["compiled"] - accuracy["eager"]) <= 0.01 and accuracy["compiled"] >= 0.95


@pytest.mark.gpu
def test_mfu_is_reported_on_a_known_gpu(tmp_path):
    from framework.train.flops import peak_tflops

    assert run_digits_in_process(tmp_path, "--max_steps", "20", "--mixed_precision", "fp16") == 0
    summary = read_json(tmp_path / "summary.json")
    assert summary["model_tflops_per_second"] > 0
    if peak_tflops(torch.cuda.get_device_name(), "fp16") is None:
        pytest.skip(f"no peak FLOP/s known for {torch.cuda.get_device_name()}")
    assert 0 < summary["mfu"] < 1
