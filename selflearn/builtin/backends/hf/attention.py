"""The attention of the ``shared`` decoder (:mod:`.shared_decoder`): one decode step's queries
against (the prompt prefix, shared by the prompt's samples) + (the row's own generated tokens),
with one softmax over both parts.

Registered in transformers' ``AttentionInterface`` under :data:`ATTN_NAME`; the decoder sets the
model's attention implementation to it only while it runs a step, and passes the prefix cache
and masks as the ``selflearn_shared`` keyword (a :class:`Shared`), which transformers' decoder
layers forward to the attention function untouched.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

ATTN_NAME = "selflearn_shared_prefix"
_OUT_DTYPE_OK: dict[str, bool] = {}


class Shared:
    """What the attention function reads besides q/k/v: per layer the prompt prefix's keys and
    values (G, kv heads, W, head dim), the prefix mask (G, W) and the generated-token mask of
    each row (R, T) as additive biases (float32, and in the model's dtype for the fused
    kernels); for the Triton kernel, optionally the first unpadded prefix key of each prompt
    (G,) and each row's own step (R,): keys outside are not read (a row refilled late reads only
    its own few generated keys, not as many as the row furthest along)."""

    __slots__ = ("fused", "gen_bias", "gen_bias_h", "gen_last", "prefix_bias", "prefix_bias_h", "prefix_first",
                 "prefix_k", "prefix_v", "triton")

    def __init__(
        self, prefix_k: list[Any], prefix_v: list[Any], prefix_bias: Any, prefix_bias_h: Any,
        gen_bias: Any, gen_bias_h: Any, fused: bool, triton: bool = False,
        prefix_first: Any = None, gen_last: Any = None,
    ) -> None:
        self.prefix_k, self.prefix_v = prefix_k, prefix_v
        self.prefix_bias, self.prefix_bias_h = prefix_bias, prefix_bias_h
        self.gen_bias, self.gen_bias_h = gen_bias, gen_bias_h
        #: the fused parts: True: :mod:`.attention_kernel`'s kernel; False: PyTorch's memory-efficient one
        self.fused, self.triton = fused, triton
        self.prefix_first, self.gen_last = prefix_first, gen_last


def _scores(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """float32 ``a @ b`` of 4-D tensors; on CUDA half inputs, cuBLAS accumulates and writes
    float32 directly (``out_dtype``), so scores are not rounded to bfloat16 first."""
    import torch

    if a.is_cuda and a.dtype in (torch.bfloat16, torch.float16) and _OUT_DTYPE_OK.get("bmm", True):
        lead = a.shape[:-2]
        try:
            out = torch.bmm(a.reshape(-1, *a.shape[-2:]), b.reshape(-1, *b.shape[-2:]), out_dtype=torch.float32)
            return out.view(*lead, a.shape[-2], b.shape[-1])
        except (RuntimeError, TypeError):
            _OUT_DTYPE_OK["bmm"] = False
    return torch.matmul(a, b).float()


def shared_prefix_attention(
    module: Any,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: Any,
    scaling: float | None = None,
    dropout: float = 0.0,
    selflearn_shared: Any = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Decode-step attention over (shared prompt prefix, the row's generated tokens).

    ``query`` (R, Hq, 1, d); ``key``/``value``: the rows' generated-token buffers
    (R, Hkv, T, d) as returned by :class:`_RowCache`; the prefix and the masks come from the
    ``selflearn_shared`` state. Returns (R, 1, Hq, d) as transformers' attention functions do.
    """
    st = selflearn_shared
    pk, pv = st.prefix_k[module.layer_idx], st.prefix_v[module.layer_idx]
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    if st.fused:
        return _fused_attention(query, key, value, pk, pv, st, scale), None
    return plain_attention(query, key, value, pk, pv, st, scale), None


def plain_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, pk: torch.Tensor, pv: torch.Tensor,
    st: Any, scale: float,
) -> torch.Tensor:
    """The attention of :func:`shared_prefix_attention` with matrix products and one float32
    softmax over both parts (CPU, float32, and the reference of the fused kernels)."""
    import torch

    rows, hq, _, d = query.shape
    groups, hkv, width, _ = pk.shape
    gq = hq // hkv
    q = query.reshape(rows, hkv, gq, d)
    s1 = _scores(prefix_queries(q, groups), pk.transpose(-1, -2)) * scale + st.prefix_bias[:, None, None, :]
    s2 = _scores(q, key.transpose(-1, -2)) * scale + st.gen_bias[:, None, None, :]
    p = torch.cat([row_layout(s1, rows, gq), s2], dim=-1).softmax(dim=-1).to(query.dtype)
    o1 = row_layout(torch.matmul(prefix_queries(p[..., :width], groups), pv), rows, gq)
    o2 = torch.matmul(p[..., width:], value)
    return (o1 + o2).reshape(rows, 1, hq, d)


def _part(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """One attention part with PyTorch's memory-efficient kernel: (output, log-sum-exp)."""
    import torch

    b, h, lq, _ = q.shape
    out, lse = torch.ops.aten._scaled_dot_product_efficient_attention(
        q, k, v, bias.expand(b, h, lq, k.shape[2]), True, scale=scale
    )[:2]
    return out, lse[..., :lq]


def prefix_queries(query: torch.Tensor, groups: int) -> torch.Tensor:
    """(R, Hkv, gq, X) per-row tensors (queries, probabilities) in the prefix part's layout:
    (G, Hkv, m*gq, X), the m samples of a prompt side by side so that one product or attention
    call reads the prompt's prefix once. :func:`row_layout` is its inverse."""
    rows, hkv, gq, x = query.shape
    m = rows // groups
    return query.reshape(groups, m, hkv, gq, x).transpose(1, 2).reshape(groups, hkv, m * gq, x)


def row_layout(t: torch.Tensor, rows: int, gq: int) -> torch.Tensor:
    """A prefix-layout tensor (G, Hkv, m*gq, ...) back to one entry per row: (R, Hkv, gq, ...)."""
    groups, hkv, mg, *tail = t.shape
    m = mg // gq
    return t.reshape(groups, hkv, m, gq, *tail).transpose(1, 2).reshape(rows, hkv, gq, *tail)


def fused_parts(
    q_pre: torch.Tensor, q_gen: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
    pk: torch.Tensor, pv: torch.Tensor, st: Any, scale: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The two attention parts, each with its log-sum-exp: the prefix (``q_pre`` from
    :func:`prefix_queries`) and the row's own tokens (``q_gen`` (R, Hkv, gq, d)), with the
    Triton kernel of :mod:`.attention_kernel` (``st.triton``) or PyTorch's memory-efficient kernel.
    :func:`merge_parts` combines them."""
    if st.triton:
        from .attention_kernel import OWN_BLOCK_N, attention, attention_pair, default_warps

        pre = (q_pre, pk, pv, st.prefix_bias, st.prefix_first, None)
        own = (q_gen, key, value, st.gen_bias, None, st.gen_last)
        if default_warps(q_pre.shape[2]) == default_warps(q_gen.shape[2]):
            # one launch for both (its warps suit both parts); else each its own launch
            return attention_pair(pre, own, scale)
        return (*attention(*pre[:4], scale, first=pre[4]),
                *attention(*own[:4], scale, last=own[5], block_n=OWN_BLOCK_N))
    o1, l1 = _part(q_pre, pk, pv, st.prefix_bias_h[:, None, None, :], scale)
    o2, l2 = _part(q_gen, key, value, st.gen_bias_h[:, None, None, :], scale)
    return o1, l1, o2, l2


def merge_parts(o1: torch.Tensor, l1: torch.Tensor, o2: torch.Tensor, l2: torch.Tensor, dtype: Any) -> torch.Tensor:
    """The exact merge of two attention parts, ``o = sum_i o_i * exp(lse_i - lse)`` with
    ``lse = logaddexp(l1, l2)``, written as one sigmoid and one lerp; (R, Hkv, gq, d)."""
    import torch

    rows, _, gq, _ = o2.shape
    w1 = torch.sigmoid(row_layout(l1, rows, gq) - l2)[..., None]
    return torch.lerp(o2.float(), row_layout(o1, rows, gq).float(), w1).to(dtype)


def _fused_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, pk: torch.Tensor, pv: torch.Tensor,
    st: Any, scale: float,
) -> torch.Tensor:
    """The same attention as :func:`shared_prefix_attention` with fused CUDA kernels (see
    :func:`fused_parts`, :func:`merge_parts`)."""
    rows, hq, _, d = query.shape
    groups, hkv, _, _ = pk.shape
    q_gen = query.reshape(rows, hkv, hq // hkv, d)
    parts = fused_parts(prefix_queries(q_gen, groups), q_gen, key, value, pk, pv, st, scale)
    return merge_parts(*parts, query.dtype).reshape(rows, 1, hq, d)


def register() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(ATTN_NAME, shared_prefix_attention)
