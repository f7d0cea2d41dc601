"""The share of training time spent waiting for data: in summary.json, and one note when the run is data-bound."""

from __future__ import annotations

import time

from helpers import fit_model, read_json, run_digits_in_process


class SlowSamples:
    """A dataset whose every sample takes 3 ms to load, as a slow disk or a heavy decode would."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        time.sleep(0.003)
        return self.dataset[index]


def test_a_slow_dataset_is_reported_as_data_bound(tmp_path, capsys):
    from recipes import digits

    config = digits.DigitsConfig(output_dir=str(tmp_path), max_steps=6, mixed_precision="no")
    train_set, test_set, names = digits.load_splits(config)
    _, result = fit_model(config, lambda: digits.DigitsCNN(config.channels, len(names), config.dropout),
                          SlowSamples(train_set), test_set, names)
    share = result.summary["data_wait_share"]
    assert 0.5 < share <= 1.0  # 32 x 3 ms of loading per step against a few ms of compute
    assert read_json(tmp_path / "summary.json")["data_wait_share"] == share
    out = capsys.readouterr().out
    assert out.count("of the training time went to waiting for data (the run is data-bound)") == 1
    assert "--dataloader_num_workers (now 0)" in out


def test_the_share_is_recorded_for_every_run(tmp_path):
    assert run_digits_in_process(tmp_path, "--max_steps", "5", "--mixed_precision", "no") == 0
    assert 0.0 <= read_json(tmp_path / "summary.json")["data_wait_share"] < 1.0
