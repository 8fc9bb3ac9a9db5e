"""The shared decoder's device buffers of one batch shape.

Why a class of its own: the CUDA graphs of the decode step read and write these tensors at fixed
addresses, so they are allocated once per shape (groups x samples per group x prompt width x
generation length) and reused by every batch of that shape; between batches and between
refills only their contents change.
"""

from __future__ import annotations

from typing import Any

from .sampling import vocab_keys


def head_dim(cfg: Any) -> int:
    return int(getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads)


class RowCache:
    """What the decoder layers see as their cache: writes the step's key/value at slot
    ``t_index`` (each row's own step) of each row's buffer and returns the buffers up to the current bucket."""

    def __init__(self, state: DecodeState, t_eff: int) -> None:
        self.state, self.t_eff = state, t_eff

    def update(self, key: Any, value: Any, layer_idx: int, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
        st = self.state
        gk, gv = st.gen_k[layer_idx], st.gen_v[layer_idx]
        index = st.t_index.view(-1, 1, 1, 1).expand(key.shape)  # each row at its own step
        gk.scatter_(2, index, key)
        gv.scatter_(2, index, value)
        return gk[:, :, : self.t_eff], gv[:, :, : self.t_eff]


class DecodeState:
    """Static buffers of one batch shape (their addresses are baked into the CUDA graphs)."""

    def __init__(self, model: Any, groups: int, m: int, width: int, gen_len: int, pad_id: int) -> None:
        import torch

        cfg = model.config
        dev, dtype = model.device, model.dtype
        rows = groups * m
        hkv = int(getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads)
        hd = head_dim(cfg)
        n_layers = int(cfg.num_hidden_layers)
        vocab = int(model.lm_head.out_features)
        self.groups, self.m, self.rows, self.width, self.gen_len = groups, m, rows, width, gen_len
        self.prefix_k = [torch.zeros(groups, hkv, width, hd, dtype=dtype, device=dev) for _ in range(n_layers)]
        self.prefix_v = [torch.zeros_like(x) for x in self.prefix_k]
        # keys and values of the generated tokens, one buffer per layer so that the fused
        # layers write a step's key and value with one copy
        self.gen_kv = [torch.zeros(2, rows, hkv, gen_len, hd, dtype=dtype, device=dev) for _ in range(n_layers)]
        self.gen_k = [x[0] for x in self.gen_kv]
        self.gen_v = [x[1] for x in self.gen_kv]
        self.prefix_bias = torch.zeros(groups, width, dtype=torch.float32, device=dev)
        #: each prompt's first key after its left padding (the Triton kernel skips the blocks before)
        self.prefix_first = torch.zeros(groups, dtype=torch.int32, device=dev)
        #: per row: its generated positions up to its own step (rows start at different steps
        #: once finished rows are refilled)
        self.gen_bias = torch.zeros(rows, gen_len, dtype=torch.float32, device=dev)
        # the same masks in the model's dtype (the fused kernels take a bias of the query's dtype)
        self.prefix_bias_h = torch.zeros(groups, width, dtype=dtype, device=dev)
        self.gen_bias_h = torch.zeros(rows, gen_len, dtype=dtype, device=dev)
        self.positions = torch.arange(gen_len, device=dev)
        #: each row's own step (the index of the token it generates next; a refilled row starts
        #: at 0) and where the step writes its token, key and value (the step, kept in range
        #: for rows that finished; the attention kernel reads no key of a row after it)
        self.step = torch.zeros(rows, dtype=torch.int64, device=dev)
        self.t_index = torch.zeros(rows, dtype=torch.int64, device=dev)
        #: the most tokens each row generates in this run (a tensor: graphs are shared by runs;
        #: per row: a mixed run's greedy and sampled rows may ask for different lengths)
        self.max_new = torch.zeros(rows, dtype=torch.int64, device=dev)
        # seen ids, tokens and log-probs have one spare column past the generation length:
        # finished rows write there, so nothing a row generated is overwritten
        self.logits = torch.zeros(rows, vocab, dtype=torch.float32, device=dev)
        self.seen = torch.zeros(rows, width + gen_len + 1, dtype=torch.int64, device=dev)
        self.keys = torch.zeros(rows, dtype=torch.int64, device=dev)
        #: the rows that decode greedily in a mixed run (SamplingConfig.mixed)
        self.greedy = torch.zeros(rows, dtype=torch.bool, device=dev)
        self.plen = torch.zeros(rows, dtype=torch.int64, device=dev)
        self.done = torch.zeros(rows, dtype=torch.bool, device=dev)
        self.length = torch.zeros(rows, dtype=torch.int64, device=dev)
        self.out_tok = torch.full((rows, gen_len + 1), pad_id, dtype=torch.int64, device=dev)
        self.out_lp = torch.zeros(rows, gen_len + 1, dtype=torch.float32, device=dev)
        self.stats = torch.zeros(2, dtype=torch.int64, device=dev)
        self.vocab = vocab_keys(vocab, dev)
        self.graphs: dict[int, Any] = {}
