"""Helpers for tests: run recipes in-process or as real launches, and read their outputs."""

from __future__ import annotations

import csv
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

import torch
from PIL import Image, ImageDraw
from safetensors.torch import load_file

from framework.core.errors import run_main

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "accelerate_configs"
DIGITS = REPO / "recipes" / "digits.py"
# Small and exact: fp32, no dropout, 2 epochs so a short window falls mid-run.
EXACT_ARGS = ["--dropout", "0", "--num_train_epochs", "2", "--seed", "7", "--logging_steps", "1",
              "--mixed_precision", "no"]
# The same with the recipe's default dropout (0.1): keyed per sample, it leaves training exact too.
DROPOUT_ARGS = EXACT_ARGS[2:]


def reset_accelerate() -> None:
    """Drop Accelerate's process-wide singletons, as a new process would start (one run per process)."""
    from accelerate.state import AcceleratorState, GradientState, PartialState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    PartialState._reset_state()


def run_digits_in_process(output_dir: Path, *args: str) -> int:
    """Run recipes/digits.py's main in this process, as a fresh process would; returns its exit code."""
    return run_recipe_in_process("digits", "--output_dir", str(output_dir), *args)


def _digits_main(argv: list[str]) -> None:
    from recipes import digits

    digits.main(argv)


def run_script_in_process(script: Path, *args: str) -> int:
    """Run a recipe file as `python script args` would (its `__main__` block), in this process; returns its exit
    code. For a recipe outside recipes/ (the README's own): the recipes' modules have run_recipe_in_process."""
    import runpy

    reset_accelerate()
    argv = sys.argv
    sys.argv = [str(script), *args]
    try:
        runpy.run_path(str(script), run_name="__main__")
    except SystemExit as done:
        return done.code if isinstance(done.code, int) else 1
    finally:
        sys.argv = argv
    return 0


def _script_main(script: Path, args: list[str]) -> None:
    code = run_script_in_process(script, *args)
    if code != 0:
        raise SystemExit(code)


def run_script_in_group(script: Path, *args: str, num_processes: int = 2, fsdp: bool = False) -> None:
    """`run_script_in_process` in a forked gloo group (see `debug_launch`); raises if a process fails."""
    debug_launch(_script_main, script, list(args), num_processes=num_processes, fsdp=fsdp)


def run_digits_in_group(output_dir: Path, *args: str, num_processes: int = 2, fsdp: bool = False) -> None:
    """Run recipes/digits.py's main in a forked gloo group of `num_processes` (see `debug_launch`): the same
    training as `accelerate launch` on that many processes (`fsdp`: with accelerate_configs/fsdp.yaml), without a
    launcher's start-up."""
    debug_launch(_digits_main, ["--output_dir", str(output_dir), *args], num_processes=num_processes, fsdp=fsdp)


def in_process_result(recipe: str, args: Sequence[str], capfd) -> subprocess.CompletedProcess:
    """`run_recipe_in_process`, its exit code and output (pytest's `capfd`) as a launch's result would hold them."""
    capfd.readouterr()
    code = run_recipe_in_process(recipe, *args)
    out, err = capfd.readouterr()
    return subprocess.CompletedProcess([recipe, *args], code, out, err)


def run_recipe_in_process(recipe: str, *args: str) -> int:
    """Run recipes/<recipe>.py's main (digits, text_classification, image_classification) with `args` in this
    process, as `python recipes/<recipe>.py args` would; returns its exit code."""
    import importlib

    module = importlib.import_module(f"recipes.{recipe}")
    reset_accelerate()
    return run_main(lambda: module.main(list(args)))


def launch(argv: Sequence[str], timeout: float = 180, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run a command (a real launcher) with stdin closed; output captured as text."""
    full_env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run(list(argv), cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, env=full_env)


def accelerate_launch(config: str, script: Path, *args: str, timeout: float = 180,
                      launcher_args: Sequence[str] = ()) -> subprocess.CompletedProcess:
    """`accelerate launch --config_file accelerate_configs/<config> <launcher_args> <script> <args>`."""
    exe = Path(sys.executable).with_name("accelerate")
    return launch([str(exe), "launch", "--config_file", str(CONFIGS / config), *launcher_args, str(script), *args],
                  timeout)


def _live_descendants(root: int) -> list[int]:
    """The processes below `root` that have not exited (zombies count as gone), from /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            pid, rest = stat.read_text().split(" (", 1)
        except OSError:
            continue
        state, ppid = rest.rsplit(") ", 1)[1].split()[:2]
        if state != "Z":
            children.setdefault(int(ppid), []).append(int(pid))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def run_and_kill_after(command: list[str], out: Path, step: int) -> int:
    """Start `command`, SIGKILL it and every process under it once checkpoint step_<step> exists (as a node failure
    or a scheduler's kill does: torchrun starts each worker in a session of its own, out of the launcher's process
    group), wait until all of them are gone; return the launcher's exit code."""
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1"}
    proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            stdin=subprocess.DEVNULL, env=env, start_new_session=True)
    marker = out / "checkpoints" / f"step_{step}"
    deadline = time.monotonic() + 120
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    workers = _live_descendants(proc.pid)
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    for pid in workers:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    code = proc.wait()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(Path(f"/proc/{pid}").exists() and
                                              Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1][0] != "Z"
                                              for pid in workers):
        time.sleep(0.01)
    return code


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (for a launch's rendezvous)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def weights(output_dir: Path) -> dict[str, torch.Tensor]:
    """The final model.safetensors of a run."""
    return load_file(str(Path(output_dir) / "model.safetensors"))


def max_abs_diff(a: Path, b: Path) -> float:
    """Max |difference| over every tensor of two runs' final weights."""
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    return max((wa[k] - wb[k]).abs().max().item() for k in wa)


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def read_metrics(output_dir: Path) -> list[dict]:
    """metrics.jsonl as a list of records."""
    return [json.loads(line) for line in (Path(output_dir) / "metrics.jsonl").read_text().splitlines()]


def train_lr_pairs(output_dir: Path) -> list[tuple[int, float]]:
    """The (step, lr) pairs of the train lines of metrics.jsonl."""
    return [(r["step"], r["lr"]) for r in read_metrics(output_dir) if "lr" in r]


def _single_threaded(fn, *args):
    # debug_launcher forks; a child that uses torch's intra-op thread pool after the parent
    # already started it deadlocks in libgomp (seen here with torch 2.13 on CPU). One thread per child
    # avoids it; the env var too, or Accelerate's MULTI_CPU setup raises the count again.
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    fn(*args)


# What `accelerate launch --config_file accelerate_configs/fsdp.yaml` puts in each process's environment (the
# settings of that file; test_fsdp checks that a launch with it and a group with these train the same weights).
FSDP_ENV = {"accelerate_use_fsdp": "true", "fsdp_version": "2", "fsdp_sharding_strategy": "FULL_SHARD",
            "fsdp_reshard_after_forward": "true", "fsdp_offload_params": "false", "fsdp_min_num_params": "1000000",
            "fsdp_auto_wrap_policy": "SIZE_BASED_WRAP", "fsdp_state_dict_type": "FULL_STATE_DICT",
            "fsdp_use_orig_params": "true", "fsdp_cpu_ram_efficient_loading": "false",
            "fsdp_sync_module_states": "true", "fsdp_activation_checkpointing": "false"}


def debug_launch(fn, *args, num_processes: int = 2, fsdp: bool = False) -> None:
    """A real forked gloo group of `num_processes` running `fn(*args)`, as `accelerate.debug_launcher` forms one,
    but on a free port (debug_launcher always takes 29500, so two test workers would collide) and safe after
    torch ran in this process (one thread per child). `fsdp`: with accelerate_configs/fsdp.yaml's settings."""
    import tempfile

    from accelerate.utils import PrepareForLaunch, patch_environment
    from torch.multiprocessing import start_processes

    reset_accelerate()  # the forked processes must not inherit an in-process run's Accelerate state
    with tempfile.NamedTemporaryFile() as rendezvous, patch_environment(
            world_size=num_processes, master_addr="127.0.0.1", master_port=str(free_port()),
            accelerate_mixed_precision="no", accelerate_debug_rdv_file=rendezvous.name, accelerate_use_cpu="yes",
            gloo_socket_ifname="lo", **(FSDP_ENV if fsdp else {})):
        start_processes(PrepareForLaunch(_single_threaded, debug=True), args=(fn, *args), nprocs=num_processes,
                        start_method="fork")


def fit_model(config, make_model, train_set, eval_set, class_names, setup=None, collate_fn=None):
    """Any model and datasets through the recipe runner (framework.run), as a recipe would.

    `make_model()` is called after seeding, as a recipe's build_model; `setup(accelerator)`, if
    given, runs right after the Accelerator is built; `collate_fn` batches both sets.
    Returns (accelerator, FitResult).
    """
    from framework import Recipe, RecipeData, run

    built = {}

    def remember(accelerator):
        built["accelerator"] = accelerator
        if setup:
            setup(accelerator)

    recipe = Recipe(type(config), lambda c, t: RecipeData(list(class_names), train=train_set, eval=eval_set,
                                                          collate_fn=collate_fn),
                    lambda c, d: make_model())
    result = run(recipe, config=config, setup=remember)
    return built["accelerator"], result


# Generated data the recipes' tests share (fixtures in conftest.py).
TEXT = REPO / "recipes" / "text_classification.py"
# A quick text run on the generated topics (text_files)
TEXT_ARGS = ["--num_train_epochs", "4", "--per_device_train_batch_size", "16", "--d_model", "64", "--max_length", "32"]
TOPICS = {
    "sports": ["match", "goal", "team", "coach", "league", "score", "player", "season"],
    "food": ["recipe", "bread", "soup", "spicy", "oven", "flavor", "dinner", "sauce"],
    "tech": ["software", "chip", "laptop", "network", "code", "server", "battery", "app"],
}
FILLER = ["the", "a", "today", "was", "really", "new", "about", "very", "some", "people", "said", "and", "this",
          "week", "good", "with", "for", "our", "big", "more"]


def write_text_split(path: Path, rows: int, seed: int) -> None:
    rng = random.Random(seed)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        for _ in range(rows):
            topic = rng.choice(sorted(TOPICS))
            words = rng.choices(FILLER, k=rng.randint(4, 12)) + rng.sample(TOPICS[topic], 2)
            rng.shuffle(words)
            writer.writerow([" ".join(words).capitalize() + ".", topic])


IMAGES = REPO / "recipes" / "image_classification.py"
SHAPES = ("circle", "square", "triangle")


def paint_shape(draw: ImageDraw.ImageDraw, shape: str, x: int, y: int, size: int, color: tuple) -> None:
    """A filled circle, square or triangle in the size x size box at (x, y)."""
    if shape == "circle":
        draw.ellipse([x, y, x + size, y + size], fill=color)
    elif shape == "square":
        draw.rectangle([x, y, x + size, y + size], fill=color)
    else:
        draw.polygon([(x + size / 2, y), (x, y + size), (x + size, y + size)], fill=color)


def draw_shape(shape: str, rng: random.Random) -> Image.Image:
    background = tuple(rng.randint(0, 90) for _ in range(3))
    color = tuple(rng.randint(150, 255) for _ in range(3))
    image = Image.new("RGB", (32, 32), background)
    size = rng.randint(12, 22)
    x, y = rng.randint(1, 31 - size), rng.randint(1, 31 - size)
    paint_shape(ImageDraw.Draw(image), shape, x, y, size, color)
    return image


def inject_inf(make_model, at_calls):
    """A model factory whose head weight gets an inf gradient on the given backward calls (1-based)."""
    calls = {"n": 0}

    def hook(grad):
        if grad.device.type == "meta":  # the runner's FLOP count builds a meta copy of the model
            return grad
        calls["n"] += 1
        return grad * float("inf") if calls["n"] in at_calls else grad

    def make():
        model = make_model()
        model.head[-1].weight.register_hook(hook)
        return model

    return make


PROBABILITY_KEYS = ("log_loss", "roc_auc", "average_precision", "top_5_accuracy", "expected_calibration_error")


def assert_same_report(a: dict, b: dict, rel: float = 1e-6) -> None:
    """Two report.json of runs that train the same model up to float rounding (another split into processes or
    micro-batches): the classification report, the confusion pairs and the calibration counts exactly equal; the
    probability metrics, sums of float probabilities, within `rel`."""
    import pytest

    floats = {*PROBABILITY_KEYS, "calibration"}
    assert {k: v for k, v in a.items() if k not in floats} == {k: v for k, v in b.items() if k not in floats}
    for key in PROBABILITY_KEYS:
        assert (key in a) == (key in b) and a.get(key) == pytest.approx(b.get(key), rel=rel), key
    if "calibration" in a:
        assert a["calibration"]["count"] == b["calibration"]["count"]
        for part in ("confidence", "accuracy"):  # null for an empty bin, in both
            assert [x is None for x in a["calibration"][part]] == [x is None for x in b["calibration"][part]]
            assert [x for x in a["calibration"][part] if x is not None] == pytest.approx(
                [x for x in b["calibration"][part] if x is not None], rel=rel)


def per_sample_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross entropy per sample (no reduction), as a loop that weights samples needs it."""
    return torch.nn.functional.cross_entropy(logits, labels, reduction="none")


def readme_section() -> str:
    """The README's "Write your own recipe" section."""
    text = (REPO / "README.md").read_text()
    start = text.index("## Write your own recipe")
    return text[start:text.index("\n## ", start + 1)]


def readme_blocks(kind: str) -> list[str]:
    """The code blocks of one kind ("python", "bash") of the README's own-recipe section, in order."""
    return re.findall(rf"```{kind}\n(.*?)```", readme_section(), re.S)


def readme_recipe() -> str:
    """The recipe block (tabular.py): the python block that defines a Recipe."""
    return next(block for block in readme_blocks("python") if "Recipe(" in block)


def tiny_pretrained_bert(folder: Path) -> None:
    """A small randomly initialised BERT and its WordPiece tokenizer, saved like a Hub model (no download)."""
    import pytest

    transformers = pytest.importorskip("transformers")  # the project's 'test' extra installs it
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "."] + sorted(
        set(FILLER) | {w for words in TOPICS.values() for w in words})
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = transformers.BertTokenizerFast(str(folder / "vocab.txt"))  # vocab_file (4.x) or vocab (5.x)
    config = transformers.BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=1,
                                     num_attention_heads=2, intermediate_size=64, max_position_embeddings=64)
    transformers.BertForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)

