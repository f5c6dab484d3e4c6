"""The train command's options are generated from TrainConfig: every field, its default, its
choices; parsing gives back the same configuration the fields describe."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from lgkd_core.cli import build_parser
from lgkd_core.engine.trainer import TrainConfig
from lgkd_core.options import from_namespace

REQUIRED = ["--dataset", "voc", "--task", "15-1", "--step", "1", "--method", "LGKD",
            "--data-root", "data", "--out", "out"]  # fmt: skip


def _parse(*extra: str) -> TrainConfig:
    args = build_parser("train").parse_args(["train", *REQUIRED, *extra])
    return from_namespace(TrainConfig, args)


def test_defaults_are_the_dataclass_defaults():
    cfg = _parse()
    expected = TrainConfig(dataset="voc", task="15-1", step=1, method="LGKD",
                           data_root=Path("data"), out=Path("out"))  # fmt: skip
    assert cfg == expected


def test_every_field_is_an_option_with_its_type():
    cfg = _parse(
        "--epochs", "3", "--lr", "0.5", "--teacher", "t.pt", "--disjoint", "--no-deterministic",
        "--importance", "--set", "prev_kd=5", "--set", "pseudo=null", "--amp", "bf16",
        "--output-stride", "8", "--weight-decay", "0.001", "--max-nonfinite", "3",
    )  # fmt: skip
    assert (cfg.epochs, cfg.lr, cfg.teacher, cfg.overlap) == (3, 0.5, Path("t.pt"), False)
    assert (cfg.deterministic, cfg.importance, cfg.amp, cfg.output_stride) == (
        False, True, "bf16", 8,
    )  # fmt: skip
    assert cfg.method_overrides == {"prev_kd": 5, "pseudo": None}
    assert (cfg.weight_decay, cfg.max_nonfinite) == (0.001, 3)
    help_text = build_parser("train").format_help() + _train_help()
    for f in dataclasses.fields(TrainConfig):
        flag = "--set" if f.name == "method_overrides" else "--" + f.name.replace("_", "-")
        if f.name == "overlap":
            flag = "--disjoint"
        assert flag in help_text, f.name


def _train_help() -> str:
    parser = build_parser("train")
    sub = next(a for a in parser._actions if a.dest == "command")
    return sub.choices["train"].format_help()


def test_help_shows_defaults_and_choices():
    text = _train_help()
    assert "default: 24" in text and "{off,fp16,bf16}" in text and "{8,16}" in text
    assert "--overlap             the overlap protocol (the default)" in text


@pytest.mark.parametrize(
    ("args", "words"),
    [(["--amp", "fp8"], "invalid choice"), (["--epochs", "ten"], "invalid int")],
)
def test_bad_values_are_refused_by_the_parser(args, words, capsys):
    with pytest.raises(SystemExit):
        _parse(*args)
    assert words in capsys.readouterr().err


def test_bad_set_item_names_the_option():
    with pytest.raises(ValueError, match="--set expects NAME=VALUE"):
        _parse("--set", "prev_kd")
