"""lmforge convert both ways, and generate / fill-mask on Hugging Face directories: each runs from the command line,
and each mistake is one line on stderr with exit code 2 and nothing half-written."""

import json

import pytest
import torch
from helpers import write_bpe_vocab, write_wordpiece_vocab

from lmforge.cli.main import main
from lmforge.tokenizer import EOS


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(code, err, *words):
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert all(word in err for word in words), err


@pytest.fixture(scope="module")
def hf_bert(tmp_path_factory):
    from transformers import BertConfig, BertForMaskedLM

    path = tmp_path_factory.mktemp("bert")
    torch.manual_seed(0)
    config = BertConfig(vocab_size=write_wordpiece_vocab(path), hidden_size=16, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=32, max_position_embeddings=32)  # fmt: skip
    BertForMaskedLM(config).save_pretrained(path, safe_serialization=True)
    return path


@pytest.fixture(scope="module")
def hf_gpt2(tmp_path_factory):
    from transformers import GPT2Config, GPT2LMHeadModel

    path = tmp_path_factory.mktemp("gpt2")
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=write_bpe_vocab(path, [EOS]), n_positions=64, n_embd=16, n_layer=2, n_head=2,
                        bos_token_id=0, eos_token_id=0)  # fmt: skip
    GPT2LMHeadModel(config).save_pretrained(path, safe_serialization=True)
    return path


def test_convert_from_hf_then_to_hf(hf_bert, tmp_path, capsys):
    code, out, _ = run(capsys, "convert", "--from-hf", hf_bert, "--out", tmp_path / "run")
    assert code == 0 and (tmp_path / "run" / "step-000000" / "model.safetensors").is_file()
    code, out, _ = run(capsys, "convert", tmp_path / "run", "--to-hf", tmp_path / "hf")
    assert code == 0 and json.loads((tmp_path / "hf" / "config.json").read_text())["architectures"] == [
        "BertForMaskedLM"
    ]
    code, _, err = run(capsys, "convert", tmp_path / "run", "--to-hf", tmp_path / "hf")
    one_line_error(code, err, "not empty")


def test_generate_and_fill_mask_read_hf_directories(hf_bert, hf_gpt2, capsys):
    code, out, _ = run(capsys, "generate", hf_gpt2, "--prompt", "the quick", "--max-new-tokens", "5", "--greedy")
    assert code == 0 and out.startswith("the quick")
    code, out, _ = run(capsys, "fill-mask", hf_bert, "the quick [MASK] fox", "--top-k", "3")
    assert code == 0 and len(out.strip().splitlines()) == 3
    code, _, err = run(capsys, "fill-mask", hf_gpt2, "the [MASK]")
    one_line_error(code, err, "gpt", "bert")


def test_convert_mistakes(hf_bert, tmp_path, capsys):
    one_line_error(*run(capsys, "convert", "--from-hf", hf_bert)[::2], "--out")
    one_line_error(*run(capsys, "convert", hf_bert)[::2], "--from-hf", "--to-hf")
    one_line_error(*run(capsys, "convert", "--from-hf", tmp_path / "missing", "--out", tmp_path / "o")[::2], "missing")
    (tmp_path / "empty").mkdir()
    one_line_error(
        *run(capsys, "convert", "--from-hf", tmp_path / "empty", "--out", tmp_path / "o")[::2], "no config.json"
    )
    assert not (tmp_path / "o").exists()


def test_pickle_needs_allow_pickle_on_the_command_line(hf_bert, tmp_path, capsys):
    from safetensors.torch import load_file

    for name in ("config.json", "vocab.txt"):
        (tmp_path / name).write_bytes((hf_bert / name).read_bytes())
    torch.save(load_file(hf_bert / "model.safetensors"), tmp_path / "pytorch_model.bin")
    code, _, err = run(capsys, "convert", "--from-hf", tmp_path, "--out", tmp_path / "run")
    one_line_error(code, err, "pytorch_model.bin", "--allow-pickle")
    assert not (tmp_path / "run").exists()
    code, out, _ = run(capsys, "convert", "--from-hf", tmp_path, "--out", tmp_path / "run", "--allow-pickle")
    assert code == 0 and "step-000000" in out


def test_convert_from_hf_refuses_an_out_that_holds_a_checkpoint(hf_bert, hf_gpt2, tmp_path, capsys):
    """Writing step-000000 into a run would take over its `latest`, as a fine-tuning into it would (also refused)."""
    run_dir = tmp_path / "run"
    assert run(capsys, "convert", "--from-hf", hf_gpt2, "--out", run_dir)[0] == 0
    (run_dir / "step-000000").rename(run_dir / "step-000007")  # a run's own checkpoint, as training leaves it
    (run_dir / "latest").write_text("step-000007\n")
    one_line_error(*run(capsys, "convert", "--from-hf", hf_bert, "--out", run_dir)[::2], "already holds a checkpoint")
    assert (run_dir / "latest").read_text() == "step-000007\n" and not (run_dir / "step-000000").exists()


def test_segment_ids_are_named_for_encoders_with_two_segment_types(tmp_path):
    """transformers' fast tokenizer returns token_type_ids only when tokenizer_config.json names them."""
    from transformers import AutoTokenizer

    from lmforge.interop.hf_tokenizer import load_hf_tokenizer, write_hf_tokenizer

    (tmp_path / "src").mkdir()
    write_wordpiece_vocab(tmp_path / "src")
    tokenizer = load_hf_tokenizer(tmp_path / "src")
    for token_type_ids in (True, False):
        out = tmp_path / str(token_type_ids)
        out.mkdir()
        write_hf_tokenizer(tokenizer, out, 32, token_type_ids=token_type_ids)
        config = json.loads((out / "tokenizer_config.json").read_text())
        assert ("token_type_ids" in config.get("model_input_names", [])) == token_type_ids
        encoded = AutoTokenizer.from_pretrained(out)("the quick fox", "a red bird")
        assert ("token_type_ids" in encoded) == token_type_ids


def test_hf_tokenizer_files_larger_than_the_embedding_table_are_refused(hf_bert, tmp_path, capsys):
    for name in ("config.json", "model.safetensors"):
        (tmp_path / name).write_bytes((hf_bert / name).read_bytes())
    words = (hf_bert / "vocab.txt").read_text().splitlines()
    (tmp_path / "vocab.txt").write_text("\n".join([*words, "extra", "words"]) + "\n")
    code, _, err = run(capsys, "fill-mask", tmp_path, "the [MASK] fox")
    one_line_error(
        code, err, f"the tokenizer has {len(words) + 2} tokens but the model has {len(words)} embedding rows"
    )
