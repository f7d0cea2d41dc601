"""The share of training time spent waiting for data: in summary.json, and one note when the run is data-bound."""

from __future__ import annotations

import time

import pytest

from helpers import fit_model, read_json, run_digits_in_process


class SlowSamples:
    """A dataset whose every sample takes 10 ms to load, as a slow disk or a heavy decode would (a step's 320 ms of
    loading against a few ms of compute: data-bound even on a machine slowed several times by other work)."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        time.sleep(0.010)
        return self.dataset[index]


@pytest.mark.slow
def test_a_slow_dataset_is_reported_as_data_bound(tmp_path, capsys):
    from recipes import digits

    config = digits.DigitsConfig(output_dir=str(tmp_path), max_steps=6, mixed_precision="no")
    train_set, test_set, names = digits.load_splits(config)
    _, result = fit_model(config, lambda: digits.DigitsCNN(config.channels, len(names), config.dropout),
                          SlowSamples(train_set), test_set, names)
    share = result.summary["data_wait_share"]
    assert 0.5 < share <= 1.0  # 32 x 10 ms of loading per step against a few ms of compute
    assert read_json(tmp_path / "summary.json")["data_wait_share"] == share
    out = capsys.readouterr().out
    assert out.count("of the training time went to waiting for data (the run is data-bound)") == 1
    assert "--dataloader_num_workers (now 0)" in out


def test_the_share_is_recorded_for_every_run(tmp_path):
    assert run_digits_in_process(tmp_path, "--max_steps", "5", "--mixed_precision", "no") == 0
    assert 0.0 <= read_json(tmp_path / "summary.json")["data_wait_share"] < 1.0


def test_auto_dataloader_workers_follow_the_device_the_set_and_the_cores():
    from framework.data.loaders import loader_workers

    cases = {  # (setting, device, samples, processes on the node, cores) -> workers
        ("auto", "cpu", 100_000, 1, 16): 0,  # the step uses the cores
        ("auto", "cuda", 5_000, 1, 16): 0,  # a small set loads faster in the training process
        ("auto", "cuda", 100_000, 1, 16): 8,  # 15 spare cores, at most 8
        ("auto", "cuda", 100_000, 4, 16): 3,  # 4 cores each, one is the training process's
        ("auto", "cuda", 100_000, 16, 16): 0,  # one core each: nothing to spare
        ("3", "cpu", 10, 1, 2): 3,  # a number is taken as given
    }
    for (setting, device, samples, processes, cores), expected in cases.items():
        assert loader_workers(setting, device, samples, processes, cores)[0] == expected, (setting, device, samples)


def test_the_banner_and_summary_say_how_many_workers_load_the_data(tmp_path, capsys):
    assert run_digits_in_process(tmp_path / "auto", "--max_steps", "2", "--mixed_precision", "no") == 0
    assert "data loading    : 0 DataLoader workers per process (auto: on CPU the training step uses the cores)" in \
        capsys.readouterr().out
    assert read_json(tmp_path / "auto" / "summary.json")["dataloader_num_workers"] == 0
    assert run_digits_in_process(tmp_path / "two", "--max_steps", "2", "--mixed_precision", "no",
                                 "--dataloader_num_workers", "2") == 0
    assert "data loading    : 2 DataLoader workers per process (as given)" in capsys.readouterr().out
    assert read_json(tmp_path / "two" / "summary.json")["dataloader_num_workers"] == 2
