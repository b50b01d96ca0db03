import pytest

import data.demo
from utils.cli import base_parser, explicit_flags, parse_args


def test_recipe_defaults_and_explicit_flags():
    parser = base_parser("test", lr=6e-4, crop=256)
    assert parser.parse_args([]).lr == 6e-4
    assert explicit_flags(parser, ["--lr", "1e-3", "--steps", "5"]) == {"lr", "steps"}
    assert explicit_flags(parser, []) == set()


def test_demo_budget_replaces_only_defaults_on_cpu(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(data.demo, "ensure_demo_data", lambda seed=0: tmp_path)
    parser = base_parser("test")
    args = parse_args(parser, ["--device", "cpu", "--crop", "48"], demo_budget={"steps": 7, "crop": 64},
                      script="demo_test")
    assert args.demo and args.data == str(tmp_path)
    assert args.steps == 7 and args.crop == 48  # the user's flag wins over the budget
    assert "CPU demo budget" in capsys.readouterr().out
    assert args.amp == "none" and args.out.endswith("demo_test")


def test_real_data_ignores_demo_budget(tmp_path):
    args = parse_args(base_parser("test"), ["--device", "cpu", "--data", str(tmp_path)],
                      demo_budget={"steps": 7}, script="x")
    assert not args.demo and args.steps == 50_000


def test_unavailable_cuda_is_a_clear_error():
    import torch
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ValueError, match="CUDA is not available"):
        parse_args(base_parser("test"), ["--device", "cuda", "--data", "x"], script="x")
