"""MLM + NSP pretraining throughput of one BERT shape in lmforge and in transformers.BertForPreTraining, CPU, fp32.

4 layers, 4 heads, d_model 256 (d_ff 1024), sequence 128, batch 16, vocabulary 30522, dropout 0.1 (BERT's);
AdamW steps on the same [CLS] A [SEP] B [SEP] batches, 15% of the tokens masked as BERT does.
lmforge runs its training step as `lmforge pretrain` does (add --compile for `lmforge pretrain --compile`): the MLM
head only at the masked positions, fused with the loss. transformers computes the vocabulary logits at every position.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import alternating_rounds, as_lmforge_trains, emit, training_steps  # noqa: E402

from lmforge.config import BertConfig, TrainConfig  # noqa: E402
from lmforge.data import mask_tokens  # noqa: E402
from lmforge.models import Bert  # noqa: E402
from lmforge.objectives.losses import pretraining_loss  # noqa: E402
from lmforge.training.optim import build_optimizer, clip_in_step  # noqa: E402

B, T, VOCAB, SPECIALS = 16, 128, 30522, 5  # ids 0-4: [PAD] [UNK] [CLS] [SEP] [MASK]
CLS, SEP, MASK = 2, 3, 4


def batch(g: torch.Generator) -> dict[str, torch.Tensor]:
    """A full-length pair batch: [CLS] A [SEP] B [SEP] with B a random length, masked at 15%, random NSP labels."""
    ids = torch.randint(SPECIALS, VOCAB, (B, T), generator=g)
    split = torch.randint(T // 4, 3 * T // 4, (B, 1), generator=g)
    positions = torch.arange(T)
    ids[:, 0] = CLS
    ids[positions == split] = SEP
    ids[:, -1] = SEP
    inputs, labels = mask_tokens(ids, ids >= SPECIALS, MASK, torch.arange(SPECIALS, VOCAB), g)
    return {
        "input_ids": inputs, "token_type_ids": (positions > split).long(),
        "attention_mask": torch.ones(B, T, dtype=torch.bool), "labels": labels,
        "sentence_label": torch.randint(0, 2, (B,), generator=g),
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=4, help="timed optimizer steps per round")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds; the best round of each side counts")
    ap.add_argument("--compile", action="store_true", help="torch.compile lmforge's step, as pretrain --compile")
    args = ap.parse_args()
    from transformers import BertConfig as HFBertConfig
    from transformers import BertForPreTraining

    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    batches = [batch(g) for _ in range(args.steps)]
    cfg = BertConfig(vocab_size=VOCAB, n_layer=4, n_head=4, d_model=256, d_ff=1024, max_seq_len=T, dropout=0.1)
    tcfg = TrainConfig(lr=1e-4, weight_decay=0.01)

    ours = as_lmforge_trains(Bert(cfg).train())
    ours_opt = build_optimizer(ours, tcfg, torch.device("cpu"))
    loss_fn = torch.compile(pretraining_loss) if args.compile else pretraining_loss

    hf = BertForPreTraining(HFBertConfig(
        vocab_size=VOCAB, hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024,
        max_position_embeddings=T, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1,
    )).train()  # fmt: skip
    hf_opt = torch.optim.AdamW(hf.parameters(), lr=1e-4, weight_decay=0.01, fused=True)  # as transformers.Trainer

    def hf_loss(b):
        return hf(
            input_ids=b["input_ids"], token_type_ids=b["token_type_ids"], attention_mask=b["attention_mask"].long(),
            labels=b["labels"], next_sentence_label=b["sentence_label"],
        ).loss  # fmt: skip

    ours_steps = training_steps(ours, ours_opt, batches, lambda b: loss_fn(ours, b)[0], clip_in_step)
    hf_steps = training_steps(hf, hf_opt, batches, hf_loss)
    ours_tps, hf_tps = alternating_rounds(ours_steps, hf_steps, args.rounds, B * T * args.steps)
    emit({
        "benchmark": "pretrain_bert", "lmforge_tokens_per_s": ours_tps, "transformers_tokens_per_s": hf_tps,
        "ratio": ours_tps / hf_tps, "compiled": args.compile, "threads": torch.get_num_threads(),
    })  # fmt: skip


if __name__ == "__main__":
    main()
