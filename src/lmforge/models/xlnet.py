"""XLNet (Yang et al., 2019): a Transformer-XL stack (relative positions, segment recurrence) with two-stream
attention, so a token can be predicted from any subset of the others without a [MASK] token in its input.

The content stream h carries each token's own embedding, as an ordinary Transformer's does; the query stream g
starts from one learned vector (mask_emb) at each predicted position and, through the same weights, sees only the
content of the tokens before it in the factorization order, never its own. perm_mask and target_mapping are as
transformers defines them: perm_mask[b, i, j] = 1 when position i may not see position j; target_mapping[b, m, j] =
1 when the m-th prediction is at position j.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.config.models import XLNetConfig
from lmforge.models.vocab import grow_table
from lmforge.nn import FeedForward, scaled_dot_product_attention


def relative_shift(x: torch.Tensor, klen: int, rows: torch.Tensor | None = None) -> torch.Tensor:
    """Transformer-XL's relative shift: scores (B, n, T, R) against the positions klen, klen - 1, ... -> (B, n, T,
    klen) against the keys, out[..., i, j] = x[..., i, j + T - i], the distance (klen - T + i) - j. With rows (B, M),
    x's M rows are queries at those positions of the T-long segment (T = R - klen for bidirectional positions), read
    with a gather; entries a causal mask hides (past the last distance) are clamped, not computed."""
    b, n, t, r = x.shape
    if rows is None:
        return x.reshape(b, n, r, t)[:, :, 1:].reshape(b, n, t, r - 1)[..., :klen]
    seq = r - klen
    index = torch.arange(klen, device=x.device) + seq - rows[..., None]  # (B, M, klen)
    return x.gather(-1, index.clamp_(0, r - 1)[:, None].expand(-1, n, -1, -1))


def _rows_of(mask: torch.Tensor | None, rows: torch.Tensor) -> torch.Tensor | None:
    """mask's (B or 1, T, klen) rows at the positions rows (B, M): (B, M, klen)."""
    if mask is None:
        return None
    mask = mask.expand(rows.size(0), -1, -1)
    return mask.gather(1, rows[..., None].expand(-1, -1, mask.size(-1)))


class RelativeAttention(nn.Module):
    """Multi-head attention whose score adds a content term, a relative-position term and a segment term:
    (q + r_w_bias) k + (q + r_r_bias) R_{i-j} + (q + r_s_bias) s_ij, each head over d_model / n_head."""

    def __init__(self, cfg: XLNetConfig):
        super().__init__()
        self.n_head, self.d_head = cfg.n_head, cfg.d_model // cfg.n_head
        self.q, self.k, self.v, self.r = (nn.Linear(cfg.d_model, cfg.d_model, bias=False) for _ in range(4))
        self.out = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.r_w_bias = nn.Parameter(torch.zeros(cfg.n_head, self.d_head))  # content bias (u in Transformer-XL)
        self.r_r_bias = nn.Parameter(torch.zeros(cfg.n_head, self.d_head))  # position bias (v in Transformer-XL)
        self.r_s_bias = nn.Parameter(torch.zeros(cfg.n_head, self.d_head))  # segment bias
        self.seg_embed = nn.Parameter(torch.zeros(2, cfg.n_head, self.d_head))  # same segment, different segment
        self.dropout = cfg.dropout

    def heads(self, proj: nn.Linear, x: torch.Tensor) -> torch.Tensor:
        return proj(x).unflatten(-1, (self.n_head, self.d_head)).transpose(1, 2)  # (B, n_head, L, d_head)

    def forward(self, q, k, v, r, segment, blocked, need_weights=False, rows=None):
        # q: (B, n_head, T, d_head) at sequence positions, or (B, n_head, M, d_head) at the positions rows (B, M);
        # k, v: (B, n_head, klen, d_head); r: (B', n_head, R, d_head); segment: (B, T or M, klen) True where query and
        # key are in different segments; blocked: (B, T or M, klen) True = hidden
        position = relative_shift((q + self.r_r_bias[:, None]) @ r.transpose(-2, -1), k.size(2), rows)
        if segment is not None:
            scores = (q + self.r_s_bias[:, None]) @ self.seg_embed.permute(1, 2, 0)  # (B, n_head, T, 2)
            position = position + torch.where(segment[:, None], scores[..., 1:], scores[..., :1])
        bias = position * self.d_head**-0.5
        if blocked is not None:  # XLNet's large negative: a query with nothing to see averages every value
            bias = bias.masked_fill(blocked[:, None], torch.finfo(bias.dtype).min)
        p = self.dropout if self.training else 0.0
        return scaled_dot_product_attention(q + self.r_w_bias[:, None], k, v, None, p, need_weights, bias)


class XLNetBlock(nn.Module):
    """Post-norm: x = LN(x + attention(x)); x = LN(x + FFN(x)), for the content stream and, with the same weights, the
    query stream, whose keys and values are the content stream's."""

    def __init__(self, cfg: XLNetConfig):
        super().__init__()
        self.attn = RelativeAttention(cfg)
        self.ln_attn = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps)
        self.ffn = FeedForward(cfg.d_model, cfg.d_ff, cfg.activation)
        self.ln_ffn = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps)
        self.drop = nn.Dropout(cfg.dropout)

    def sublayers(self, x: torch.Tensor, attended: torch.Tensor) -> torch.Tensor:
        x = self.ln_attn(x + self.drop(self.attn.out(attended.transpose(1, 2).flatten(2))))
        return self.ln_ffn(x + self.drop(self.ffn(x)))

    def forward(self, h, g, mem, r, segment, blocked_h, query=None, need_weights=False):
        # h: (B, T, d_model); g: (B, num_predict, d_model) or None; mem: (B, mlen, d_model) or None; query: the
        # predicted positions (B, num_predict) and their rows of segment and of the query stream's mask
        attn = self.attn
        context = h if mem is None else torch.cat([mem, h], dim=1)
        k, v, r = attn.heads(attn.k, context), attn.heads(attn.v, context), attn.heads(attn.r, r)
        attended, weights = attn(attn.heads(attn.q, h), k, v, r, segment, blocked_h, need_weights)
        if g is not None:  # only the predicted positions' queries: num_predict rows, not T
            rows, segment_g, blocked_g = query
            attended_g, _ = attn(attn.heads(attn.q, g), k, v, r, segment_g, blocked_g, rows=rows)
            g = self.sublayers(g, attended_g)
        return self.sublayers(h, attended), g, weights


class XLNet(nn.Module):
    """Word embedding -> n_layer two-stream blocks (with the memory of earlier segments) -> LM head tied to the word
    embedding, with a bias of its own (transformers' lm_loss)."""

    family = "xlnet"

    def __init__(self, cfg: XLNetConfig):
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.mask_emb = nn.Parameter(torch.zeros(cfg.d_model))  # the query stream's input at a predicted position
        self.blocks = nn.ModuleList(XLNetBlock(cfg) for _ in range(cfg.n_layer))
        self.drop = nn.Dropout(cfg.dropout)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size)
        self.lm_head.weight = self.tok_emb.weight
        self._init_weights()
        if not cfg.untie_r:
            for block in self.blocks[1:]:
                for name in ("r_w_bias", "r_r_bias", "r_s_bias"):
                    setattr(block.attn, name, getattr(self.blocks[0].attn, name))

    @torch.no_grad()
    def _init_weights(self) -> None:
        """transformers' XLNet initialization: matrices, embeddings, mask_emb and the attention's biases N(0, 0.02);
        linear biases zero; LayerNorms one and zero."""
        for name, p in self.named_parameters():
            if ".ln_" in name:
                continue
            if name.endswith(".bias"):
                nn.init.zeros_(p)
            else:
                nn.init.normal_(p, std=0.02)

    def num_parameters(self) -> int:
        """Distinct parameters (the tied LM head and any shared attention biases count once)."""
        return sum(p.numel() for p in self.parameters())

    @property
    def input_embeddings(self) -> nn.Embedding:
        return self.tok_emb

    @torch.no_grad()
    def add_token_rows(self, token_ids: list[int]) -> None:
        """Grows the vocabulary (and cfg.vocab_size) to hold token_ids; new LM-head biases start at zero."""
        n = grow_table(self.tok_emb, token_ids)
        bias = self.lm_head.bias
        self.lm_head.bias = nn.Parameter(torch.cat([bias, bias.new_zeros(n - len(bias))]))
        self.lm_head.weight, self.lm_head.out_features = self.tok_emb.weight, n
        self.cfg.vocab_size = n

    def relative_positions(self, t: int, klen: int, batch: int, device: torch.device) -> torch.Tensor:
        """Sinusoids [sin, cos] (B', R, d_model) of the distances klen, klen - 1, ... down to -t + 1 (bi) or 0 (uni);
        with bi_data the second half of the batch gets the distances reversed."""
        cfg = self.cfg
        inv_freq = 1 / 10000 ** (torch.arange(0, cfg.d_model, 2, device=device).float() / cfg.d_model)
        distance = torch.arange(klen, -t if cfg.attn_type == "bi" else -1, -1, device=device).float()
        directions = [distance, -distance] if cfg.bi_data else [distance]
        if cfg.bi_data and batch % 2:
            raise ValueError(f"model.bi_data needs an even batch (half forward, half backward), not {batch}")
        tables = []
        for d in directions:
            if cfg.clamp_len > 0:
                d = d.clamp(-cfg.clamp_len, cfg.clamp_len)
            angles = d[:, None] * inv_freq
            table = torch.cat([angles.sin(), angles.cos()], dim=-1)[None]
            tables.append(table.expand(batch // len(directions), -1, -1) if cfg.bi_data else table)
        return torch.cat(tables)

    def blocked(self, t: int, mlen: int, attention_mask, perm_mask, device) -> torch.Tensor | None:
        """(B or 1, T, mlen + T), True where query i may not see key j: the causal mask (uni), padding keys and
        perm_mask; the memory is hidden only by the causal mask. None when nothing is hidden."""
        blocked = None
        if self.cfg.attn_type == "uni":
            blocked = torch.ones(t, mlen + t, dtype=torch.bool, device=device).triu(mlen + 1)
            if self.cfg.same_length:  # every query sees the same number of keys
                blocked[:, :t] |= torch.ones(t, t, dtype=torch.bool, device=device).tril(-1)
            blocked = blocked[None]
        data = None
        if attention_mask is not None:
            data = ~attention_mask.bool()[:, None, :]
        if perm_mask is not None:
            data = (perm_mask > 0) if data is None else data | (perm_mask > 0)
        if data is not None:
            data = F.pad(data, (mlen, 0), value=False)
            blocked = data if blocked is None else blocked | data
        return blocked

    def _run(self, input_ids, token_type_ids, attention_mask, perm_mask, target_mapping, mems, need_weights):
        """Both streams through the stack: (content or query output, new mems, attention weights)."""
        b, t = input_ids.shape
        mlen = mems[0].size(1) if mems is not None else 0
        blocked_g = self.blocked(t, mlen, attention_mask, perm_mask, input_ids.device)
        blocked_h = None  # the content stream always sees its own token
        if blocked_g is not None:
            eye = torch.eye(t, dtype=torch.bool, device=input_ids.device)
            blocked_h = blocked_g & ~F.pad(eye, (mlen, 0), value=False)
        segment = None
        if token_type_ids is not None:  # the memory counts as segment 0
            keys = F.pad(token_type_ids, (mlen, 0), value=0)
            segment = token_type_ids[:, :, None] != keys[:, None, :]
        h = self.drop(self.tok_emb(input_ids))
        g = query = None
        if target_mapping is not None:  # one-hot rows, as XLNet builds them: prediction m is at position rows[:, m]
            rows = target_mapping.argmax(-1)
            g = self.drop(self.mask_emb.expand(b, rows.size(1), -1))
            query = (rows, _rows_of(segment, rows), _rows_of(blocked_g, rows))
        r = self.drop(self.relative_positions(t, mlen + t, b, input_ids.device).to(h.dtype))
        new_mems, attentions = [], []
        for i, block in enumerate(self.blocks):
            mem = mems[i] if mems is not None else None
            new_mems.append(self._remember(h, mem))
            h, g, weights = block(h, g, mem, r, segment, blocked_h, query, need_weights)
            attentions.append(weights)
        return self.drop(h if g is None else g), new_mems, attentions

    def _remember(self, h: torch.Tensor, mem: torch.Tensor | None) -> torch.Tensor:
        """The memory the next segment reads: the last mem_len content states before this layer, without gradient."""
        if self.cfg.reuse_len is not None:
            h = h[:, : self.cfg.reuse_len]
        states = h if mem is None else torch.cat([mem, h], dim=1)
        if self.cfg.mem_len is not None:
            states = states[:, -self.cfg.mem_len :]
        return states.detach()

    def hidden(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        cache: None = None,
        need_weights: bool = False,
    ) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
        """The content stream's final states (B, T, d_model) with no permutation (what fine-tuning heads read), and
        per-layer attention weights (B, n_head, T, T) if asked. The family surface: XLNet's memory is forward's mems,
        not a KV cache."""
        if cache is not None:
            raise ValueError("XLNet takes no KV cache; pass earlier segments' states as forward's mems")
        x, _, attentions = self._run(input_ids, token_type_ids, attention_mask, None, None, None, need_weights)
        return x, attentions

    def forward(
        self,
        input_ids: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        perm_mask: torch.Tensor | None = None,
        target_mapping: torch.Tensor | None = None,
        mems: list[torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Logits and the new mems (per layer (B, mlen, d_model)). With target_mapping (B, num_predict, T) the logits
        are the query stream's (B, num_predict, vocab_size), the head run on those positions only; else the content
        stream's (B, T, vocab_size)."""
        x, new_mems = self.predicted(input_ids, token_type_ids, attention_mask, perm_mask, target_mapping, mems)
        return self.lm_head(x), new_mems

    def predicted(
        self,
        input_ids: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        perm_mask: torch.Tensor | None = None,
        target_mapping: torch.Tensor | None = None,
        mems: list[torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """forward's final states before the LM head, (B, num_predict or T, d_model), and the new mems: what the
        pretraining loss reads, fused with the head so that the logits never exist whole."""
        x, new_mems, _ = self._run(input_ids, token_type_ids, attention_mask, perm_mask, target_mapping, mems, False)
        return x, new_mems

    def next_token_logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Logits (B, vocab_size) of the token after input_ids (B, T), as transformers' XLNet generates: a dummy token
        (id 0) is appended, hidden from every position by perm_mask, and predicted by the query stream."""
        b, t = input_ids.shape
        ids = F.pad(input_ids, (0, 1), value=0)
        perm_mask = torch.zeros(b, t + 1, t + 1, device=ids.device)
        perm_mask[:, :, -1] = 1.0
        target_mapping = torch.zeros(b, 1, t + 1, device=ids.device)
        target_mapping[:, 0, -1] = 1.0
        return self(ids, perm_mask=perm_mask, target_mapping=target_mapping)[0][:, 0]
