"""Dropout keyed per sample (framework.KeyedDropout): the masks, and the same model on any split with dropout on.

The unit tests check the masks against the rule written out again here in plain Python
integers, their statistics, and what a batch, padding, activation checkpointing and
torch.compile may not change. The recipe tests train with the default dropout (0.1)
on 1 process 32 x 1, 1 process 8 x 4, 2 processes 16 x 1 and a 1-process checkpoint
resumed on 2 processes, and compare weights; a contrast with torch's dropout shows
that the bound would catch per-micro-batch masks.
"""

from __future__ import annotations

import shutil
import zlib

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from framework import KeyedDropout
from framework.train.keyed_dropout import assign_layer_keys, keyed_samples, sample_keys

from helpers import debug_launch, max_abs_diff, read_json, reset_accelerate

MASK32 = 0xFFFFFFFF


def reference_hash(value: int) -> int:
    """The documented 32-bit mix, in Python integers: two rounds of (x ^ x >> 16) * 0x45D9F3B mod 2**32, then
    x ^ x >> 16."""
    for _ in range(2):
        value = ((value ^ (value >> 16)) * 0x45D9F3B) & MASK32
    return value ^ (value >> 16)


def reference_keep(seed: int, epoch: int, index: int, layer: int, position: int, p: float) -> bool:
    sample = reference_hash(index ^ reference_hash(reference_hash(seed) ^ epoch))
    return reference_hash(reference_hash(position ^ layer) ^ sample) >= int(p * 2 ** 32)


def keyed(module: nn.Module, x: torch.Tensor, indices, seed: int = 3, epoch: int = 0) -> torch.Tensor:
    with keyed_samples(sample_keys(torch.tensor(indices), seed, epoch)):
        return module(x)


def test_masks_follow_the_documented_rule():
    layer = KeyedDropout(0.3, key=12345).train()
    out = keyed(layer, torch.ones(3, 2, 5), [7, 0, 123456], seed=42, epoch=2)
    for row, index in enumerate([7, 0, 123456]):
        for position in range(10):
            kept = out[row].flatten()[position].item() != 0
            assert kept == reference_keep(42, 2, index, 12345, position, 0.3)
    assert torch.allclose(out[out != 0], torch.tensor(1 / 0.7))  # the kept elements, scaled by 1 / (1 - p)


def test_masks_drop_at_rate_p_unbiased_and_unrelated_across_samples_layers_and_epochs():
    x = torch.ones(64, 5000)
    a = keyed(KeyedDropout(0.1, key=1).train(), x, range(64))
    kept = (a != 0).float()
    assert abs(kept.mean().item() - 0.9) < 0.003
    assert abs(a.mean().item() - 1.0) < 0.005  # the 1 / (1 - p) scale keeps the expectation
    other_layer = (keyed(KeyedDropout(0.1, key=2).train(), x, range(64)) != 0).float()
    other_epoch = (keyed(KeyedDropout(0.1, key=1).train(), x, range(64), epoch=1) != 0).float()
    other_seed = (keyed(KeyedDropout(0.1, key=1).train(), x, range(64), seed=4) != 0).float()
    for other in (kept[1:], other_layer, other_epoch, other_seed):
        rows = min(len(other), 63)
        correlation = torch.corrcoef(torch.stack([kept[:rows].flatten(), other[:rows].flatten()]))[0, 1]
        assert abs(correlation.item()) < 0.02


def test_a_samples_mask_depends_neither_on_its_batch_nor_on_padding():
    layer = KeyedDropout(0.5, key=9).train()
    x = torch.randn(32, 6, 4)
    whole = keyed(layer, x, range(100, 132))
    assert keyed(layer, x[[5, 20, 3]], [105, 120, 103]).equal(whole[[5, 20, 3]])
    padded = torch.cat([x, torch.randn(32, 3, 4)], dim=1)  # 3 more positions at the end of every sequence
    assert keyed(layer, padded, range(100, 132))[:, :6].equal(whole)


def test_a_large_activation_masked_in_blocks_gets_the_same_masks():
    layer = KeyedDropout(0.5, key=4).train()
    x = torch.ones(3, (1 << 19) + 7)  # over the block size: masked a sample at a time
    whole = keyed(layer, x, [10, 11, 12])
    assert all(keyed(layer, x[[row]], [10 + row]).equal(whole[[row]]) for row in range(3))
    assert abs((whole != 0).float().mean().item() - 0.5) < 0.002


def test_outside_a_keyed_pass_it_is_torch_dropout_and_identity_in_eval():
    layer = KeyedDropout(0.2, key=5).train()
    x = torch.randn(8, 10)
    torch.manual_seed(0)
    plain = layer(x)
    torch.manual_seed(0)
    assert plain.equal(F.dropout(x, 0.2, training=True))
    assert keyed(layer.eval(), x, range(8)).equal(x)
    assert keyed(KeyedDropout(0.0, key=5).train(), x, range(8)).equal(x)


def test_gradients_pass_through_the_kept_elements_only():
    layer = KeyedDropout(0.4, key=77).train()
    x = torch.randn(4, 50, requires_grad=True)
    out = keyed(layer, x, [1, 2, 3, 4])
    out.sum().backward()
    assert x.grad.equal((out.detach() != 0).float() / 0.6)


def test_the_cpu_float_factor_gives_the_bits_of_mask_then_scale_forward_and_backward():
    """On a CPU a float32 activation is multiplied by a factor made on the host (0 or 1 / (1 - p)); the same bits,
    signed zeros and non-finite values included, as multiplying by the boolean mask and then by the scale (the path
    of other dtypes, CUDA and compiled code), and the same gradient."""
    from framework.data.sample_keys import hash32_
    from framework.train.keyed_dropout import position_hashes

    layer = KeyedDropout(0.3, key=99).train()
    x = torch.randn(6, 4, 5)
    x[0, 0, :3] = torch.tensor([float("inf"), float("nan"), -0.0])
    indices = [4, 0, 17, 2 ** 31 + 5, 9, 11]
    keys = sample_keys(torch.tensor(indices), 7, 3)
    positions = position_hashes(20, 99, torch.device("cpu")).view(4, 5)
    keep = hash32_(positions ^ keys.view(-1, 1, 1)) >= int(0.3 * 2 ** 32)  # the tensor path's mask
    expected_in = x.clone().requires_grad_()
    expected = expected_in * keep * (1 / 0.7)
    got_in = x.clone().requires_grad_()
    with keyed_samples(keys):
        got = layer(got_in)
    grad = torch.randn_like(x)
    grad[1, 1, 1] = -0.0
    expected.backward(grad)
    got.backward(grad)
    for one, other in ((got, expected), (got_in.grad, expected_in.grad)):
        assert one.dtype == other.dtype == torch.float32
        assert torch.equal(one.view(torch.int32), other.view(torch.int32))  # bit for bit: -0.0 and NaN too

def test_bad_probability_and_batch_mismatch_are_refused():
    with pytest.raises(ValueError, match=r"dropout probability 1\.0 is not in \[0, 1\)"):
        KeyedDropout(1.0)
    with pytest.raises(RuntimeError, match="batch of 2 rows for 3 keyed samples"):
        keyed(KeyedDropout(0.1, key=1).train(), torch.ones(2, 4), [0, 1, 2])
    with pytest.raises(RuntimeError, match=r"no key: call .*assign_layer_keys\(model\)"):
        keyed(KeyedDropout(0.1).train(), torch.ones(2, 4), [0, 1])


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear, self.drop = nn.Linear(16, 16), KeyedDropout(0.3)

    def forward(self, x):
        return x + self.drop(torch.tanh(self.linear(x)))


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList([Block(), Block()])
        self.head = nn.Sequential(KeyedDropout(0.1), nn.Linear(16, 3))

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return self.head(x)


def test_layer_keys_are_the_module_names():
    net = Net()
    assert assign_layer_keys(net) == 3
    assert [m.key for m in net.modules() if isinstance(m, KeyedDropout)] == \
        [zlib.crc32(name.encode()) for name in ("blocks.0.drop", "blocks.1.drop", "head.0")]


def _gradients(net: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    net.zero_grad()
    with keyed_samples(sample_keys(torch.arange(len(x)), 1, 0)):
        net(x).square().sum().backward()
    return [p.grad.clone() for p in net.parameters()]


def test_activation_checkpointing_recomputes_the_same_masks():
    from framework.train.activation_checkpointing import enable_gradient_checkpointing

    torch.manual_seed(0)
    net = Net()
    assign_layer_keys(net)
    x = torch.randn(8, 16)
    plain = _gradients(net, x)
    net.checkpoint_blocks = lambda: list(net.blocks)
    assert enable_gradient_checkpointing(net) == 2
    torch.manual_seed(123)  # a different global stream must not matter
    assert all(a.equal(b) for a, b in zip(plain, _gradients(net, x)))


def test_compiled_masks_equal_eager_without_a_graph_break_or_a_recompile_per_batch():
    import torch._dynamo

    torch._dynamo.reset()
    torch.manual_seed(0)
    net = Net().train()
    assign_layer_keys(net)
    compiled = torch.compile(net, fullgraph=True, dynamic=True)  # fullgraph: a graph break is an error
    torch._dynamo.utils.counters.clear()
    for start, size in ((0, 8), (8, 8), (16, 5)):
        x = torch.randn(size, 16)
        with keyed_samples(sample_keys(torch.arange(start, start + size), 1, 0)):
            eager, fast = net(x), compiled(x)
        assert ((eager == 0) == (fast == 0)).all()  # the integer masks are exact
        assert torch.allclose(eager, fast, atol=1e-6)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1
    torch._dynamo.reset()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_masks_equal_cpu_masks_also_under_fp16_autocast():
    layer = KeyedDropout(0.25, key=31).train()
    x = torch.randn(16, 7, 33)
    cpu = keyed(layer, x, range(16))
    with torch.autocast("cuda", dtype=torch.float16), keyed_samples(sample_keys(torch.arange(16), 3, 0).cuda()):
        cuda = layer(x.cuda().half())
    assert cuda.dtype == torch.float16
    assert ((cpu == 0) == (cuda.cpu() == 0)).all()
    with keyed_samples(sample_keys(torch.arange(16), 3, 0)):  # keys on the host: moved to the input's device
        assert ((layer(x.cuda()).cpu() == 0) == (cpu == 0)).all()


# --- the recipes: the same weights on any split, with their default dropout on ---------------------------------

TOLERANCE = 5e-5


def _main(module_name: str):
    def main(argv):
        import importlib

        importlib.import_module(module_name).main(argv)
    return main


def _four_splits(tmp_path, module_name: str, args: list[str], checkpoint_step: int) -> dict[str, object]:
    """Run 1 x 32 (checkpointing at `checkpoint_step`), 8 x 4, 2 processes x 16 and the checkpoint resumed on
    2 processes x 16; return their output folders."""
    import importlib

    from framework.core.errors import run_main

    main = importlib.import_module(module_name).main
    runs = {name: tmp_path / name for name in ("one_32", "one_8x4", "two_16", "resumed_on_two")}

    def in_process(out, *extra):
        reset_accelerate()
        assert run_main(lambda: main(["--output_dir", str(out), *args, *extra])) == 0

    # The 2-process group first: forked processes would inherit the Accelerate state of an in-process run.
    debug_launch(_main(module_name), ["--output_dir", str(runs["two_16"]), *args,
                                      "--per_device_train_batch_size", "16"])
    in_process(runs["one_32"], "--per_device_train_batch_size", "32", "--checkpointing_steps", str(checkpoint_step))
    in_process(runs["one_8x4"], "--per_device_train_batch_size", "8", "--gradient_accumulation_steps", "4")
    reset_accelerate()
    checkpoint = runs["one_32"] / "checkpoints" / f"step_{checkpoint_step}"
    shutil.copytree(checkpoint, runs["resumed_on_two"] / "checkpoints" / checkpoint.name)
    debug_launch(_main(module_name), ["--output_dir", str(runs["resumed_on_two"]), *args,
                                      "--per_device_train_batch_size", "16", "--resume_from_checkpoint", "latest"])
    assert read_json(runs["resumed_on_two"] / "summary.json")["world_size"] == 2
    return runs


def _assert_all_close(runs: dict, bound: float = TOLERANCE) -> None:
    reference = runs["one_32"]
    diffs = {name: max_abs_diff(reference, out) for name, out in runs.items() if name != "one_32"}
    print("weight differences from 1 x 32:", diffs)
    assert all(d <= bound for d in diffs.values()), diffs


@pytest.mark.slow
def test_image_recipe_with_dropout_trains_the_same_weights_on_any_split(tmp_path, image_folders):
    args = ["--train_dir", str(image_folders / "train"), "--validation_dir", str(image_folders / "valid"),
            "--num_train_epochs", "2", "--channels", "8", "--groups", "4", "--mixed_precision", "no", "--seed", "5",
            "--augment", "crop,flip", "--dropout", "0.3"]
    runs = _four_splits(tmp_path, "image_classification", args, checkpoint_step=4)
    _assert_all_close(runs)
    assert read_json(runs["one_32"] / "summary.json")["keyed_dropout_layers"] == 1


@pytest.mark.slow
def test_text_encoder_with_dropout_trains_the_same_weights_on_any_split(tmp_path, text_files):
    args = ["--train_file", str(text_files / "train.csv"), "--validation_file", str(text_files / "valid.csv"),
            "--model", "transformer", "--d_model", "64", "--max_length", "32", "--max_steps", "5",
            "--mixed_precision", "no", "--seed", "3"]
    runs = _four_splits(tmp_path, "text_classification", args, checkpoint_step=2)
    _assert_all_close(runs)
    assert read_json(runs["one_32"] / "summary.json")["keyed_dropout_layers"] == 2 * 3 + 1
