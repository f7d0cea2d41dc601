"""Config parsing: flags, YAML, precedence, and a one-line error for every bad value."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from framework.core.config import TrainingConfig, parse_config
from framework.core.errors import ConfigError


@dataclass
class RecipeConfig(TrainingConfig):
    dropout: float = 0.1
    use_extra: bool = False


def test_defaults_and_cli_types():
    config = parse_config(RecipeConfig, ["--per_device_train_batch_size", "16", "--learning_rate=5e-4",
                                         "--dropout", "0.25", "--use_extra", "true", "--mixed_precision", "bf16"])
    assert config.per_device_train_batch_size == 16
    assert config.learning_rate == 5e-4
    assert config.dropout == 0.25
    assert config.use_extra is True
    assert config.mixed_precision == "bf16"
    assert config.gradient_accumulation_steps == 1  # untouched default


@pytest.mark.parametrize("text,expected", [("false", False), ("True", True), ("0", False), ("yes", True)])
def test_booleans_accept_true_false(text, expected):
    assert parse_config(RecipeConfig, ["--use_extra", text]).use_extra is expected


def test_bare_boolean_flag_switches_on():
    assert parse_config(RecipeConfig, ["--use_extra", "--seed", "3"]).use_extra is True


def test_precedence_cli_over_yaml_over_default(tmp_path):
    file = tmp_path / "c.yaml"
    file.write_text("learning_rate: 0.01\nseed: 5\ndropout: 0.0\n")
    config = parse_config(RecipeConfig, ["--config", str(file), "--seed", "9"])
    assert config.seed == 9  # CLI wins
    assert config.learning_rate == 0.01  # YAML wins over default
    assert config.dropout == 0.0
    assert config.weight_decay == TrainingConfig.weight_decay  # default


def test_yaml_exponent_without_dot_is_a_number(tmp_path):
    file = tmp_path / "c.yaml"
    file.write_text("learning_rate: 1e-3\n")  # PyYAML reads this as a string
    assert parse_config(RecipeConfig, ["--config", str(file)]).learning_rate == 1e-3


BAD_FLAGS = [
    (["--per_device_train_batch_size", "0"], "--per_device_train_batch_size must be an integer >= 1"),
    (["--per_device_eval_batch_size", "-2"], "--per_device_eval_batch_size must be an integer >= 1"),
    (["--gradient_accumulation_steps", "0"], "--gradient_accumulation_steps must be an integer >= 1"),
    (["--num_train_epochs", "-1"], "--num_train_epochs must be an integer >= 1"),
    (["--max_steps", "-5"], "--max_steps must be -1"),
    (["--learning_rate", "0"], "--learning_rate must be a finite number > 0"),
    (["--learning_rate", "nan"], "--learning_rate must be a finite number > 0"),
    (["--learning_rate", "fast"], "--learning_rate must be a number, got 'fast'"),
    (["--per_device_train_batch_size", "3.5"], "--per_device_train_batch_size must be an integer, got '3.5'"),
    (["--mixed_precision", "fp8x"], "--mixed_precision must be one of no, fp16, bf16"),
    (["--lr_scheduler_type", "step"], "--lr_scheduler_type must be one of linear, cosine, constant, constant_with_warmup"),
    (["--use_extra", "maybe"], "--use_extra must be true or false"),
    (["--learnig_rate", "1e-3"], "unknown flag --learnig_rate (did you mean --learning_rate?"),
    (["--seed"], "--seed needs a value"),
    (["stray"], "unexpected argument 'stray'"),
    (["--config", "/nonexistent/c.yaml"], "--config file '/nonexistent/c.yaml' does not exist"),
]


@pytest.mark.parametrize("argv,message", BAD_FLAGS, ids=[" ".join(a) for a, _ in BAD_FLAGS])
def test_bad_flags_give_one_line_naming_the_flag(argv, message):
    with pytest.raises(ConfigError) as err:
        parse_config(RecipeConfig, argv)
    text = str(err.value)
    assert message in text
    assert "\n" not in text


def test_yaml_unknown_key(tmp_path):
    file = tmp_path / "c.yaml"
    file.write_text("learning_rate: 0.01\nbatch_size: 8\n")
    with pytest.raises(ConfigError, match=r"unknown key 'batch_size' in --config file .*run with --help"):
        parse_config(RecipeConfig, ["--config", str(file)])


def test_yaml_wrong_type(tmp_path):
    file = tmp_path / "c.yaml"
    file.write_text("seed: [1, 2]\n")
    with pytest.raises(ConfigError, match=r"--seed must be an integer, got \[1, 2\]"):
        parse_config(RecipeConfig, ["--config", str(file)])


@pytest.mark.parametrize("content,message", [("a: [1, 2\n", "is not valid YAML"), ("- 1\n- 2\n", "must hold a mapping")])
def test_yaml_malformed(tmp_path, content, message):
    file = tmp_path / "c.yaml"
    file.write_text(content)
    with pytest.raises(ConfigError, match=message):
        parse_config(RecipeConfig, ["--config", str(file)])


def test_help_lists_every_flag(capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_config(RecipeConfig, ["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for name in ("per_device_train_batch_size", "gradient_accumulation_steps", "mixed_precision", "dropout", "config"):
        assert f"--{name}" in out
    assert "Micro-batch size on each process." in out


def test_constant_has_no_warmup_and_constant_with_warmup_has():
    from framework.train.optim import lr_factor

    assert [lr_factor(s, 3, 10, "constant") for s in range(5)] == [1.0] * 5
    assert [lr_factor(s, 3, 10, "constant_with_warmup") for s in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]


@pytest.mark.parametrize("spec,message", [
    ("1,2", "--class_weights needs 3 finite numbers >= 0 (one per class), got '1,2'"),
    ("1,x,2", "--class_weights must be 'balanced' or a comma list of numbers, got '1,x,2'"),
    ("1,-1,2", "--class_weights needs 3 finite numbers >= 0 (one per class), got '1,-1,2'"),
])
def test_bad_class_weights(spec, message):
    from framework.core.errors import FlagError
    from framework.train.losses import class_weights_from

    with pytest.raises(FlagError) as err:
        class_weights_from(spec, None, 3)
    assert err.value.field == "class_weights" and err.value.as_flag() == message  # the line the CLI prints


def test_balanced_class_weights_follow_sklearn():
    import numpy as np
    from sklearn.utils.class_weight import compute_class_weight

    from framework.train.losses import class_weights_from

    labels = np.array([0, 0, 0, 1, 2, 2])
    expected = compute_class_weight("balanced", classes=np.arange(3), y=labels)
    assert class_weights_from("balanced", labels, 3).tolist() == pytest.approx(expected.tolist())
