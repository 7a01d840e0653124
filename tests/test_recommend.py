"""lmforge recommend: the compute a budget buys, the rule-of-thumb size and tokens, a resized config whose parameter
count is the model's, and for fine-tuning the family to start from."""

import json
import math

import pytest
import torch
import yaml

from lmforge.cli.main import main
from lmforge.config import RunConfig, load_config
from lmforge.errors import LmforgeError
from lmforge.hardware import PROFILES
from lmforge.models import MODELS
from lmforge.recommend import budget_flops, compute_optimal, recommend


def test_the_budget_and_the_rule_of_thumb_by_hand():
    h100 = PROFILES["H100"]
    flops = budget_flops(2.0, h100, "bf16", 4, 0.5)
    assert flops == pytest.approx(2 * 3600 * 989e12 * 0.5 * 4)
    n, d = compute_optimal(flops)
    assert d == pytest.approx(20 * n) and 6 * n * d == pytest.approx(flops)


@pytest.mark.parametrize("task", ["lm", "mlm", "translation", "span-corruption"])
def test_a_pretraining_recommendation_is_a_config_of_about_the_optimal_size(task):
    r = recommend(task, 1.0, PROFILES["A100"], "bf16")
    cfg = RunConfig.from_dict(r["config"])
    with torch.device("meta"):
        assert MODELS[cfg.family](cfg.model).num_parameters() == r["parameters"]
    assert abs(math.log(r["parameters"] / r["optimal_parameters"])) < math.log(1.6)  # widths come in steps of 64
    assert r["tokens"] == 20 * r["parameters"] and r["max_steps"] == cfg.train.max_steps > 0


def test_fine_tuning_names_a_family_and_why():
    assert recommend("ner", 1.0, PROFILES["L4"])["family"] == "bert"
    assert recommend("summarization", 1.0, PROFILES["L4"])["family"] == "t5"
    with pytest.raises(LmforgeError, match="unknown task 'poetry'"):
        recommend("poetry", 1.0, PROFILES["L4"])
    with pytest.raises(LmforgeError, match="--budget"):
        recommend("lm", 0, PROFILES["L4"])


def test_the_cli_writes_a_config_that_loads(tmp_path, capsys):
    out = tmp_path / "rec.yaml"
    assert main(["recommend", "--task", "lm", "--budget", "0.5", "--hardware", "L4", "--out", str(out), "--json"]) == 0
    r = json.loads(capsys.readouterr().out.splitlines()[0])
    assert load_config(str(out)).model.d_model == r["config"]["model"]["d_model"]
    assert yaml.safe_load(out.read_text())["train"]["max_steps"] == r["max_steps"]
