"""lmforge estimate: exact parameter counts, the objectives' FLOPs, memory and time by formula, hardware profiles,
and an estimated CPU training time that matches a measured one."""

from __future__ import annotations

import argparse
import dataclasses
import json
import random

import pytest
import torch
import yaml
from helpers import tiny_checkpoint

from lmforge.cli.estimate import add_verbs
from lmforge.config import load_config, shipped_configs
from lmforge.errors import LmforgeError
from lmforge.estimate import estimate, format_estimate, model_config_of
from lmforge.hardware import PROFILES, Hardware, hardware_profile, read_hardware, this_machine
from lmforge.models import MODELS
from lmforge.objectives.families import objective_for

H100 = PROFILES["H100"]


def built(cfg):
    torch.manual_seed(0)
    return MODELS[cfg.family](cfg.model)


@pytest.mark.parametrize("name", sorted(shipped_configs()))
def test_parameter_count_is_the_built_models(name):
    cfg = load_config(name)
    assert estimate(cfg, hardware=H100)["model"]["parameters"] == sum(p.numel() for p in built(cfg).parameters())


def test_parameter_count_of_a_t5_and_an_albert_with_shared_layers():
    t5 = load_config("t5-small", ["model.n_layer=2", "model.n_decoder_layer=3", "model.feed_forward=gated-gelu"])
    albert = load_config("albert-small", ["model.n_layer=6", "model.share_layers=true", "model.embedding_size=32"])
    unshared = load_config("albert-small", ["model.n_layer=6", "model.share_layers=false", "model.embedding_size=32"])
    for cfg in (t5, albert):
        assert estimate(cfg, hardware=H100)["model"]["parameters"] == sum(p.numel() for p in built(cfg).parameters())
    layer = sum(p.numel() for p in built(albert).encoder.blocks[0].parameters())
    counts = [estimate(c, hardware=H100)["model"]["parameters"] for c in (albert, unshared)]
    assert counts[1] - counts[0] == 5 * layer  # one layer's weights serve all six


def test_estimating_every_shipped_config_leaves_torch_dynamo_unloaded():
    """Meta tensors' initialization and torch.compiler.disable each import torch._dynamo: 2 s of a 3 s command."""
    import subprocess
    import sys

    code = (
        "import sys; from lmforge.config import load_config, shipped_configs; from lmforge.estimate import estimate;"
        "from lmforge.hardware import PROFILES; [estimate(load_config(n), hardware=PROFILES['H100']) for n in "
        "shipped_configs()]; assert 'torch._dynamo' not in sys.modules, 'torch._dynamo was imported'"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr[-2000:]


@pytest.mark.parametrize("name", ["char-small", "bert-small", "albert-small", "t5-small"])
def test_flops_per_token_are_the_objectives(name):
    cfg = load_config(name, ["train.seq_len=32"])
    e = estimate(cfg, hardware=H100, tokens=1000)
    assert e["flops_per_token"]["train"] == pytest.approx(objective_for(cfg).flops_per_token(built(cfg), cfg))
    assert e["flops_per_token"]["inference"] == pytest.approx(e["flops_per_token"]["train"] / 3)
    assert e["train"]["flops"] == pytest.approx(1000 * e["flops_per_token"]["train"])


def test_memory_time_and_energy_by_formula():
    cfg = load_config("gpt-small")
    e = estimate(cfg, tokens=10**9, precision="bf16", hardware=H100, devices=4, utilization=0.5, grid_intensity=0.3)
    n, m = e["model"]["parameters"], e["memory_bytes"]
    assert (m["weights"], m["gradients"], m["optimizer"]) == (4 * n, 4 * n, 8 * n)
    assert m["fsdp_per_device"] - m["ddp_per_device"] == pytest.approx(-16 * n * 3 / 4)
    assert m["activations_checkpointed"] < m["activations"]
    seconds = e["train"]["flops"] / (989e12 * 0.5 * 4)
    assert e["train"]["seconds"] == pytest.approx(seconds)
    assert e["train"]["kwh"] == pytest.approx(seconds / 3600 * 700 * 4 / 1000)
    assert e["train"]["co2_kg"] == pytest.approx(e["train"]["kwh"] * 0.3)
    assert e["run"]["tokens"] == 10**9
    default = estimate(cfg, hardware=H100)
    assert default["run"]["tokens"] == cfg.train.max_steps * cfg.train.batch_size * cfg.train.seq_len
    assert default["run"]["utilization"] == 0.4
    assert "training time" in format_estimate(default)


def test_a_user_hardware_file_round_trips_and_a_bad_one_is_one_clear_error(tmp_path):
    fields = {"fp32_tflops": 10.0, "bf16_tflops": 100.0, "memory_gb": 16, "bandwidth_gbs": 500, "power_w": 150}
    path = tmp_path / "my-gpu.yaml"
    path.write_text(yaml.safe_dump(fields))
    assert hardware_profile(str(path)) == Hardware("my-gpu", **fields)
    e = estimate(load_config("char-small"), tokens=10**6, hardware=read_hardware(path), utilization=0.25)
    assert e["train"]["seconds"] == pytest.approx(e["train"]["flops"] / (10e12 * 0.25))
    for bad, message in (
        ({**fields, "tflops": 3}, "unknown key 'tflops'"),
        ({k: v for k, v in fields.items() if k != "power_w"}, "missing key 'power_w'"),
        ({**fields, "memory_gb": "lots"}, "memory_gb = 'lots' must be a positive number"),
    ):
        path.write_text(yaml.safe_dump(bad))
        with pytest.raises(LmforgeError, match=message) as error:
            read_hardware(path)
        assert "\n" not in str(error.value)
    with pytest.raises(LmforgeError, match="unknown hardware 'B200'"):
        hardware_profile("B200")


def test_this_machine_is_measured_once_and_cached(tmp_path, monkeypatch):
    cache = tmp_path / "hardware.json"
    rng = torch.get_rng_state()
    first = this_machine(cache)
    assert first.fp32_tflops > 0 and first.bandwidth_gbs > 0 and cache.is_file()
    # measuring draws nothing from torch's generator: a run that measures the peak trains as one that reads it cached
    assert torch.equal(torch.get_rng_state(), rng)
    monkeypatch.setattr("lmforge.hardware._probe", lambda: pytest.fail("measured again"))
    assert this_machine(cache) == first


def test_measuring_again_keeps_the_highest_figures(tmp_path, monkeypatch):
    """A benchmark measures again (measure=True); a busy moment measures low, so the cache keeps each figure's
    highest, which a training run's MFU then reads."""
    cache = tmp_path / "hardware.json"
    figures = iter([{"tflops": 0.2, "bf16_tflops": 0.4, "bandwidth_gbs": 30.0},
                    {"tflops": 0.1, "bf16_tflops": 0.5, "bandwidth_gbs": 20.0}])  # fmt: skip
    monkeypatch.setattr("lmforge.hardware._probe", lambda: next(figures))
    assert this_machine(cache, measure=True).fp32_tflops == 0.2
    second = this_machine(cache, measure=True)
    assert (second.fp32_tflops, second.bf16_tflops, second.bandwidth_gbs) == (0.2, 0.5, 30.0)
    assert this_machine(cache) == second


def run_cli(argv, capsys) -> str:
    parser = argparse.ArgumentParser()
    add_verbs(parser.add_subparsers())
    args = parser.parse_args(["estimate", *argv])
    args.fn(args)
    return capsys.readouterr().out


def test_json_output_parses(capsys):
    out = run_cli(["--config", "t5-small", "--set", "model.n_layer=2", "--hardware", "a100", "--json",
                   "--serve-tokens", "1000", "--devices", "2"], capsys)  # fmt: skip
    e = json.loads(out)
    assert e["model"]["family"] == "t5" and e["hardware"]["name"] == "A100" and e["serve"]["tokens"] == 1000
    assert e["serve"]["flops"] == pytest.approx(1000 * e["flops_per_token"]["inference"])
    assert e["serve"]["seconds"] >= e["serve"]["bandwidth_bound_seconds"] > 0
    assert "per device, FSDP x2" in run_cli(["--config", "char-small", "--hardware", "L4", "--devices", "2"], capsys)
    with pytest.raises(LmforgeError, match="one of --config"):
        run_cli(["--hardware", "L4"], capsys)
    with pytest.raises(LmforgeError, match="not a directory"):
        run_cli(["--model", "no/such/run", "--hardware", "L4"], capsys)


def test_estimated_cpu_training_time_is_within_1_5x_of_the_measured(tmp_path, one_thread):
    """char-small as shipped, 30 steps on one thread; the first 10 (warm-up) are left out of both sides."""
    from lmforge.recipes.pretrain import train

    rng = random.Random(0)
    words = ["red", "blue", "green", "cat", "dog", "bird"]
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("".join(f"the {rng.choice(words)} {rng.choice(words)} sat on the mat.\n" for _ in range(2000)))
    cfg = load_config("char-small", [
        f"data.path={corpus}", f"train.out={tmp_path / 'run'}", "train.max_steps=30", "train.log_every=1",
        "train.eval_every=0", "train.progress=false", "train.device=cpu",
    ])  # fmt: skip
    result = train(cfg)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    elapsed = {r["step"]: r["elapsed_s"] for r in records if "elapsed_s" in r}
    measured = elapsed[30] - elapsed[10]
    trained = model_config_of(result.checkpoint)  # the vocabulary the char tokenizer gave it
    hardware = this_machine(tmp_path / "hardware.json")
    e = estimate(trained, tokens=20 * cfg.train.batch_size * cfg.train.seq_len, hardware=hardware)
    assert measured / 1.5 < e["train"]["seconds"] < measured * 1.5, (e["train"]["seconds"], measured)


@pytest.mark.parametrize("family", ["bert", "gpt"])
def test_a_checkpoint_and_its_hugging_face_export_count_the_loaded_models_parameters(tmp_path, family):
    from lmforge.checkpoint.convert import convert_to_hf
    from lmforge.checkpoint.loader import load

    checkpoint = tiny_checkpoint(tmp_path / "run", family)
    hf = convert_to_hf(checkpoint, tmp_path / "hf")
    for path in (checkpoint, tmp_path / "run", hf):
        n = sum(p.numel() for p in load(path).model.parameters())
        assert estimate(model_config_of(path), hardware=H100)["model"]["parameters"] == n


def test_training_logs_its_energy_and_co2_so_far(tmp_path, corpus):
    """Each log record carries energy_kwh = power x elapsed seconds (the device's power, said in energy_source) and
    co2_kg at the run's grid intensity."""
    from lmforge.cli.main import main
    from lmforge.hardware import device_power

    out = tmp_path / "run"
    argv = ["train", "--config", "char-small", "--data", str(corpus), "--out", str(out), "--max-steps", "4",
            "--no-progress", "--set", "model.n_layer=1", "--set", "model.d_model=32", "--set", "model.max_seq_len=16",
            "--set", "train.batch_size=4", "--set", "train.log_every=2",
            "--set", "train.grid_intensity=0.25"]  # fmt: skip
    assert main(argv) == 0
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if '"energy_kwh"' in x]
    watts, source = device_power(torch.device("cpu"))
    assert [r["step"] for r in records] == [2, 4] and records[0]["energy_source"] == source
    for r in records:
        assert r["energy_kwh"] == pytest.approx(watts * r["elapsed_s"] / 3.6e6, rel=0.05)
        assert r["co2_kg"] == pytest.approx(0.25 * r["energy_kwh"])
    assert records[1]["energy_kwh"] > records[0]["energy_kwh"]


def test_codecarbon_measures_the_energy_when_installed(tmp_path, corpus, monkeypatch):
    """With the `green` extra, the log's energy comes from codecarbon's meter (positive, growing, said in
    energy_source) and its CO2 is that energy at the run's grid intensity; LMFORGE_ENERGY=estimate skips it."""
    pytest.importorskip("codecarbon", reason="the green extra (make test installs it)")
    from lmforge.cli.main import main
    from lmforge.training import energy

    monkeypatch.setenv("LMFORGE_ENERGY", "auto")
    monkeypatch.setattr(energy, "MEASURE_EVERY_S", 0.0)
    starts = energy.EnergyMeter.__init__

    def started(meter, device):  # the run waits for codecarbon, so that even its first record is measured
        starts(meter, device)
        if meter.starting is not None:
            meter.starting.join()

    monkeypatch.setattr(energy.EnergyMeter, "__init__", started)
    out = tmp_path / "run"
    argv = ["train", "--config", "char-small", "--data", str(corpus), "--out", str(out), "--max-steps", "30",
            "--no-progress", "--set", "model.n_layer=2", "--set", "model.d_model=128", "--set", "model.max_seq_len=64",
            "--set", "train.batch_size=16", "--set", "train.log_every=10", "--set", "train.grid_intensity=0.25",
            "--set", "train.eval_every=0"]  # fmt: skip
    assert main(argv) == 0
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if '"energy_kwh"' in x]
    assert [r["energy_source"] for r in records] == ["measured by codecarbon"] * 3
    kwh = [r["energy_kwh"] for r in records]
    assert 0 < kwh[0] < kwh[1] < kwh[2] < 1e-3  # a few seconds of a CPU: millijoules to a few kJ, never a kWh
    for r in records:
        assert r["co2_kg"] == pytest.approx(0.25 * r["energy_kwh"])
    monkeypatch.setenv("LMFORGE_ENERGY", "estimate")
    skipped = energy.EnergyMeter(torch.device("cpu"))
    assert skipped.tracker is None and skipped.starting is None


def test_codecarbon_starts_beside_the_run_which_is_estimated_until_it_measures(monkeypatch):
    import threading
    from types import SimpleNamespace

    from lmforge.training import energy

    go, stopped = threading.Event(), []

    class Tracker:
        _total_energy = SimpleNamespace(kWh=1e-6)

        def flush(self):
            pass

        def stop(self):
            stopped.append(True)

    def slow_tracker(device):
        go.wait(10)
        return Tracker()

    monkeypatch.setenv("LMFORGE_ENERGY", "auto")
    monkeypatch.setattr(energy, "_tracker", slow_tracker)
    with energy.EnergyMeter(torch.device("cpu")) as meter:  # returns at once: codecarbon is not waited for
        assert meter.source.startswith("estimated for") and meter.kwh() < 1e-6
        go.set()
        meter.starting.join()
        gap = meter.power_w * (meter.tracked_from - meter.start) / 3.6e6
        assert meter.kwh() == pytest.approx(gap + 1e-6) and meter.source == "measured by codecarbon"
    assert stopped == [True] and meter.tracker is None


def test_without_codecarbon_the_energy_is_estimated(monkeypatch):
    import sys

    from lmforge.training import energy

    monkeypatch.setenv("LMFORGE_ENERGY", "auto")
    monkeypatch.setitem(sys.modules, "codecarbon", None)  # import codecarbon raises ImportError
    with energy.EnergyMeter(torch.device("cpu")) as meter:
        assert meter.tracker is None and meter.source.startswith("estimated for")
        assert meter.kwh() >= 0


@pytest.fixture(scope="module")
def long_documents(tmp_path_factory):
    """A third of tinyshakespeare in 20 long documents (about 2,000 words each), so every encoder sequence is full, as
    the estimate assumes; a third keeps the tokenizers' training short and still fills their vocabularies."""
    from conftest import SHARED

    source = SHARED / "tinyshakespeare.txt"
    if not source.is_file():
        pytest.skip(f"{source} is not there (../shared/data beside the repository)")
    lines = [line for line in source.read_text(encoding="utf-8").splitlines() if line.strip()]
    lines = lines[: len(lines) // 3]
    n = len(lines) // 20
    path = tmp_path_factory.mktemp("long") / "long.txt"
    path.write_text("\n\n".join("\n".join(lines[i * n : (i + 1) * n]) for i in range(20)), encoding="utf-8")
    return path


@pytest.mark.parametrize("name", sorted(shipped_configs()))
def test_estimated_peak_memory_is_within_25_percent_of_a_measured_training_step(name, long_documents, tmp_path):
    """Two training steps of each shipped config at its own size, the live tensor bytes' peak measured (TensorPeak,
    as CUDA's max_memory_allocated counts them) against estimate's weights + gradients + optimizer + activations."""
    from conftest import SHARED

    from lmforge.training.memory import TensorPeak
    from lmforge.training.optim import build_optimizer

    parallel = load_config(name).data.source is not None
    data = [f"data.path={SHARED / 'translation' if parallel else long_documents}"]
    cfg = load_config(name, [f"train.out={tmp_path}", "train.progress=false", *data])
    objective = objective_for(cfg)
    prepared = objective.data(cfg, tmp_path / "data")
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, **objective.vocabulary(prepared.tokenizer)))
    torch.manual_seed(0)
    model = MODELS[cfg.family](cfg.model).train()
    optimizer = build_optimizer(model, cfg.train, torch.device("cpu"))
    sampler = objective.sampler(cfg, prepared, 0)
    with TensorPeak(held=sum(p.nbytes for p in model.parameters())) as meter:
        for _ in range(2):
            batch = sampler.next()
            objective.loss(model, batch)[0].backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    length = batch["input_ids"].shape[1] if isinstance(batch, dict) else batch[0].shape[1]  # a pair batch's own
    memory = estimate(cfg, hardware=H100, seq_len=length if parallel else None)["memory_bytes"]
    estimated = sum(memory[k] for k in ("weights", "gradients", "optimizer", "activations"))
    mb = (estimated / 2**20, meter.peak / 2**20)
    assert 0.75 <= estimated / meter.peak <= 1.25, "estimated {:.0f} MB, measured {:.0f} MB".format(*mb)


@pytest.mark.parametrize("name", ["bert-small", "gpt-small"])
def test_a_fine_tuning_step_is_estimated_without_the_lm_head(name, tmp_path):
    """--finetune: FLOPs of the stack alone (6 x the blocks' parameters + attention), and the memory of a
    classification step (the backbone's hidden states, a linear head on the first / last token) within 25%."""
    from lmforge.estimate import planned_config
    from lmforge.training.memory import TensorPeak
    from lmforge.training.optim import build_optimizer

    cfg = planned_config(load_config(name, ["train.batch_size=16", "train.seq_len=128"]))
    e = estimate(cfg, hardware=H100, finetune=True)
    model = MODELS[cfg.family](cfg.model).train()
    stack = model.decoder if cfg.family == "gpt" else model.encoder
    m = cfg.model
    block = sum(p.numel() for p in stack.blocks[0].parameters())
    assert e["flops_per_token"]["train"] == 6 * m.n_layer * block + 12 * m.n_layer * m.d_model * 128
    assert e["flops_per_token"]["train"] < estimate(cfg, hardware=H100)["flops_per_token"]["train"]
    assert e["run"]["kind"] == "fine-tuning"
    head = torch.nn.Linear(m.d_model, 2)
    optimizer = build_optimizer(model, cfg.train, torch.device("cpu"))
    ids = torch.randint(5, m.vocab_size, (16, 128))
    with TensorPeak(held=sum(p.nbytes for p in model.parameters())) as meter:
        for _ in range(2):
            hidden = model.hidden(ids, torch.ones_like(ids, dtype=torch.bool))[0]
            logits = head(hidden[:, -1 if cfg.family == "gpt" else 0])
            torch.nn.functional.cross_entropy(logits, torch.zeros(16, dtype=torch.long)).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    memory = e["memory_bytes"]
    estimated = sum(memory[k] for k in ("weights", "gradients", "optimizer", "activations"))
    mb = (estimated / 2**20, meter.peak / 2**20)
    assert 0.75 <= estimated / meter.peak <= 1.25, "estimated {:.0f} MB, measured {:.0f} MB".format(*mb)


def test_codecarbon_learns_the_cpu_model_from_proc_cpuinfo_not_a_cpuid_process(monkeypatch):
    """py-cpuinfo starts a Python process to run CPUID (1.2 s of a core beside the first steps); codecarbon's cached
    question is answered with /proc/cpuinfo's model name, the same string, and py-cpuinfo is left as it was."""
    pytest.importorskip("codecarbon", reason="the green extra (make test installs it)")
    import cpuinfo as py_cpuinfo
    from codecarbon.core.util import detect_cpu_model

    from lmforge.training import energy

    def refuse():
        raise AssertionError("py-cpuinfo was asked")

    monkeypatch.setattr(py_cpuinfo, "get_cpu_info", refuse)
    monkeypatch.setattr(energy, "cpuinfo", lambda field: "Some CPU @ 3.0GHz" if field == "model name" else "")
    detect_cpu_model.cache_clear()
    try:
        energy._tell_cpu_model()
        assert detect_cpu_model() == "Some CPU @ 3.0GHz" and py_cpuinfo.get_cpu_info is refuse
        detect_cpu_model.cache_clear()
        monkeypatch.setattr(energy, "cpuinfo", lambda field: "")  # no /proc/cpuinfo: codecarbon asks as it does
        energy._tell_cpu_model()
        assert detect_cpu_model.cache_info().currsize == 0
    finally:
        detect_cpu_model.cache_clear()
