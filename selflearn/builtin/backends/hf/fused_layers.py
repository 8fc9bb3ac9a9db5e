"""Fused decoder layers for the ``shared`` decoder's step (:mod:`.shared_decoder`).

Why: inside a CUDA graph the step of a small model is still bound by kernel launches, not by
memory or arithmetic. transformers' Llama layer runs about 60 kernels per decode step (RMSNorm
alone is 8, the rotary embedding 10, three separate projections for q/k/v and two for the
MLP's gate/up); a 30-layer model replays ~1,800 kernels of 3-4 us each per token, about 7 ms at
640 rows against ~1 ms of memory traffic.

Here the layer is written as plain tensor functions over the model's own weights:

* q/k/v and gate/up weights are packed into one matrix each (one GEMM instead of three and two;
  the modules' parameters become views into the packed matrices, so no memory is added);
* the step is cut at the attention calls into pieces of the same shape for every layer:
  ``first`` (embedding output -> RMSNorm -> qkv -> rotary), ``mid`` (attention merge -> o_proj
  -> residual -> RMSNorm -> MLP -> residual -> the next layer's RMSNorm -> qkv -> rotary), and
  ``last`` (... -> final norm -> ``lm_head``). With ``compile`` they are compiled once each by
  ``torch.compile`` (inductor fuses the norms, rotary, residuals, activation and the attention
  merge into a few kernels), and the same compiled ``mid`` serves all layers because the weights
  are arguments, not constants;
* the step's key and value leave ``mid`` as one tensor, written into the row's cache with one
  copy.

A SmolLM2-135M step (30 layers and token selection) then replays 622 kernels instead of 1,717
(measured on an H100, docs/performance.md). The arithmetic is the model's own (float32 RMSNorm
statistics, rotary in the model's dtype, the same activation function), so in float32 the
tokens equal those of the model's modules; in bfloat16 the fused kernels round intermediate
values differently (once instead of after every operation), as any fused implementation does.

Supported: the Llama-family layers of :data:`.shared_decoder.SUPPORTED` built from plain
``nn.Linear`` modules without hooks (quantised, LoRA-wrapped or offloaded models use the
model's modules instead, see :func:`unfusable_reason`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

import attrs

from .attention import merge_parts, prefix_queries

if TYPE_CHECKING:
    import torch

log = logging.getLogger("selflearn.hf")

#: "compile": inductor-compiled pieces; "eager": the same pieces run as written; "off": the
#: model's own modules; "auto": compile on CUDA when Triton is installed, off otherwise
FuseMode = Literal["auto", "compile", "eager", "off"]


@attrs.frozen
class LayerWeights:
    """One decoder layer's weights as the fused pieces take them."""

    norm_in: Any
    norm_post: Any
    qkv_w: Any
    qkv_b: Any
    q_norm: Any  # Qwen3's per-head RMSNorm weights (None elsewhere)
    k_norm: Any
    o_w: Any
    o_b: Any
    gu_w: Any
    gu_b: Any
    down_w: Any
    down_b: Any


@attrs.frozen
class Dims:
    """Static sizes the pieces close over (constants of the compiled code)."""

    hq: int
    hkv: int
    head_dim: int
    eps: float
    qk_eps: float
    inter: int
    scale: float


def _plain_linear(mod: Any) -> bool:
    import torch

    return type(mod) is torch.nn.Linear and not _hooked(mod)


def _hooked(mod: Any) -> bool:
    return bool(
        getattr(mod, "_forward_hooks", None) or getattr(mod, "_forward_pre_hooks", None)
        or hasattr(mod, "_hf_hook")
    )


def unfusable_reason(model: Any) -> str | None:
    """Why the fused layers cannot stand in for ``model``'s layers (None: they can)."""
    inner = model.model
    devices = {p.device for p in model.parameters()}
    if len(devices) != 1:
        return f"parameters on {len(devices)} devices"
    if not _plain_linear(getattr(model, "lm_head", None)) or _hooked(inner.norm):
        return "lm_head is not a plain nn.Linear, or the final norm has hooks"
    acts = set()
    for i, layer in enumerate(inner.layers):
        attn, mlp = getattr(layer, "self_attn", None), getattr(layer, "mlp", None)
        if attn is None or mlp is None or _hooked(layer) or _hooked(attn) or _hooked(mlp):
            return f"layer {i} is not a plain self_attn + mlp layer"
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            if not _plain_linear(getattr(attn, name, None)):
                return f"layer {i}: self_attn.{name} is not a plain nn.Linear"
        for name in ("gate_proj", "up_proj", "down_proj"):
            if not _plain_linear(getattr(mlp, name, None)):
                return f"layer {i}: mlp.{name} is not a plain nn.Linear"
        for norm in (layer.input_layernorm, layer.post_attention_layernorm):
            if not (type(norm).__name__.endswith("RMSNorm") and hasattr(norm, "variance_epsilon")):
                return f"layer {i}: {type(norm).__name__} is not an RMSNorm"
        if (getattr(attn, "q_norm", None) is None) != (getattr(attn, "k_norm", None) is None):
            return f"layer {i}: q_norm without k_norm"
        acts.add(type(mlp.act_fn))
    if len(acts) != 1:
        return "layers with different activation functions"
    return None


def _pack(mods: list[Any]) -> tuple[Any, Any]:
    """One weight matrix (and bias) for several linear layers over the same input; the modules'
    parameters become views of it, so the memory is not doubled."""
    import torch

    with torch.no_grad():
        w = torch.cat([m.weight for m in mods])
        has_b = [m.bias is not None for m in mods]
        b = None
        if any(has_b):
            b = torch.cat([m.bias if m.bias is not None else m.weight.new_zeros(m.out_features) for m in mods])
        lo = 0
        for m in mods:
            hi = lo + m.out_features
            m.weight.data = w[lo:hi]
            if m.bias is not None and b is not None:
                m.bias.data = b[lo:hi]
            lo = hi
    return w, b


def pack_layers(model: Any) -> tuple[list[LayerWeights], Dims, Callable[[Any], Any]]:
    """The layers' weights (q/k/v and gate/up packed), the static sizes and the activation;
    packed once per model (a second decoder on the same model reuses the packing)."""
    cached = getattr(model, "_selflearn_packed", None)
    if cached is not None:
        return cached
    cfg = model.config
    inner = model.model
    layers = []
    for layer in inner.layers[: cfg.num_hidden_layers]:
        attn, mlp = layer.self_attn, layer.mlp
        qkv_w, qkv_b = _pack([attn.q_proj, attn.k_proj, attn.v_proj])
        gu_w, gu_b = _pack([mlp.gate_proj, mlp.up_proj])
        qn, kn = getattr(attn, "q_norm", None), getattr(attn, "k_norm", None)
        layers.append(LayerWeights(
            norm_in=layer.input_layernorm.weight, norm_post=layer.post_attention_layernorm.weight,
            qkv_w=qkv_w, qkv_b=qkv_b,
            q_norm=qn.weight if qn is not None else None, k_norm=kn.weight if kn is not None else None,
            o_w=attn.o_proj.weight, o_b=attn.o_proj.bias,
            gu_w=gu_w, gu_b=gu_b, down_w=mlp.down_proj.weight, down_b=mlp.down_proj.bias,
        ))
    first = inner.layers[0]
    qn = getattr(first.self_attn, "q_norm", None)
    dims = Dims(
        hq=int(cfg.num_attention_heads),
        hkv=int(getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads),
        head_dim=int(first.self_attn.head_dim),
        eps=float(first.input_layernorm.variance_epsilon),
        qk_eps=float(qn.variance_epsilon) if qn is not None else 0.0,
        inter=int(first.mlp.gate_proj.out_features),
        scale=float(getattr(first.self_attn, "scaling", None) or int(first.self_attn.head_dim) ** -0.5),
    )
    packed = (layers, dims, first.mlp.act_fn)
    model._selflearn_packed = packed
    return packed


def _rms(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    """transformers' RMSNorm: float32 statistics, the weight applied in the input's dtype."""
    import torch

    dt = x.dtype
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return w * xf.to(dt)


def _residual(h: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``h + y`` for the residual stream, in half precision taken in float32 and rounded once:
    the value of the model's own half-precision add (which also rounds the float32 sum). Why
    not ``h + y``: inductor folds a same-dtype ``h + mm(...)`` into cuBLAS's ``addmm``, which
    first copies ``h`` into the output (a device-to-device copy per residual, 61 per
    SmolLM2-135M step); this add instead joins the next fused kernel, the RMSNorm that reads
    ``h`` anyway (docs/performance.md, run 24)."""
    import torch

    if h.dtype == torch.float32:
        return h + y
    return (h.float() + y.float()).to(h.dtype)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    import torch

    half = x.shape[-1] // 2
    rot = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return (x * cos) + (rot * sin)


def _qkv_piece(d: Dims) -> Callable[..., tuple[torch.Tensor, ...]]:
    """The layer's input half for dims ``d``: projections, rotary embedding, the cache write."""
    import torch

    def qkv(x: torch.Tensor, lw_qkv_w: torch.Tensor, lw_qkv_b: Any, q_norm: Any, k_norm: Any,
            cos: torch.Tensor, sin: torch.Tensor, m: int, cache: torch.Tensor,
            t_index: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Projections, rotary embedding, and the step's key/value written into ``cache``
        (2, R, Hkv, T, d) at each row's ``t_index`` (fused with the rotary kernel); the queries."""
        rows = x.shape[0]
        hd = d.head_dim
        y = torch.nn.functional.linear(x, lw_qkv_w, lw_qkv_b)
        q, k, v = y.split([d.hq * hd, d.hkv * hd, d.hkv * hd], dim=-1)
        q, k, v = q.view(rows, d.hq, hd), k.view(rows, d.hkv, hd), v.view(rows, d.hkv, hd)
        if q_norm is not None:
            q, k = _rms(q, q_norm, d.qk_eps), _rms(k, k_norm, d.qk_eps)
        q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
        # an indexed store (aten.index_put_), not scatter_: inductor writes index_put_ into
        # the cache in place, but lowers scatter_ on an input as a copy of the whole cache
        # plus the scatter (per layer and step; run 16's regression, see performance.md)
        row = torch.arange(rows, device=x.device)
        cache[:, row, :, t_index] = torch.stack((k, v), dim=1)  # (R, 2, Hkv, d)
        if m <= 0:  # plain attention takes (R, Hq, 1, d)
            return (q.view(rows, d.hq, 1, hd),)
        q_gen = q.view(rows, d.hkv, d.hq // d.hkv, hd)
        return prefix_queries(q_gen, rows // m), q_gen

    return qkv


def _block_piece(d: Dims, act: Callable[[Any], Any]) -> Callable[..., torch.Tensor]:
    """The layer's output half for dims ``d`` and the MLP's activation ``act``."""
    import torch

    def merge(parts: tuple[torch.Tensor, ...], dtype: torch.dtype) -> torch.Tensor:
        if len(parts) == 1:
            return parts[0].reshape(parts[0].shape[0], -1)
        o1, l1, o2, l2 = parts
        return merge_parts(o1, l1, o2, l2, dtype).reshape(o2.shape[0], -1)

    def block(h: torch.Tensor, parts: tuple[torch.Tensor, ...], o_w: torch.Tensor, o_b: Any,
              norm_post: torch.Tensor, gu_w: torch.Tensor, gu_b: Any, down_w: torch.Tensor,
              down_b: Any) -> torch.Tensor:
        """Attention output -> o_proj -> residual -> MLP -> residual."""
        h = _residual(h, torch.nn.functional.linear(merge(parts, h.dtype), o_w, o_b))
        x = _rms(h, norm_post, d.eps)
        gu = torch.nn.functional.linear(x, gu_w, gu_b)
        gate, up = gu.split([d.inter, d.inter], dim=-1)
        return _residual(h, torch.nn.functional.linear(act(gate) * up, down_w, down_b))

    return block


def _pieces(qkv: Callable[..., tuple[torch.Tensor, ...]], block: Callable[..., torch.Tensor], d: Dims,
            final_eps: float) -> tuple[Callable[..., Any], Callable[..., Any], Callable[..., None]]:
    """The step's three pieces (see the module docstring), cut at the attention calls."""
    import torch

    def first(h: torch.Tensor, norm_in: torch.Tensor, qkv_w: torch.Tensor, qkv_b: Any,
              q_norm: Any, k_norm: Any, cos: torch.Tensor, sin: torch.Tensor, m: int,
              cache: torch.Tensor, t_index: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return qkv(_rms(h, norm_in, d.eps), qkv_w, qkv_b, q_norm, k_norm, cos, sin, m, cache, t_index)

    def mid(h: torch.Tensor, parts: tuple[torch.Tensor, ...], o_w: torch.Tensor, o_b: Any,
            norm_post: torch.Tensor, gu_w: torch.Tensor, gu_b: Any, down_w: torch.Tensor, down_b: Any,
            norm_in: torch.Tensor, qkv_w: torch.Tensor, qkv_b: Any, q_norm: Any, k_norm: Any,
            cos: torch.Tensor, sin: torch.Tensor, m: int, cache: torch.Tensor,
            t_index: torch.Tensor) -> tuple[torch.Tensor, ...]:
        h = block(h, parts, o_w, o_b, norm_post, gu_w, gu_b, down_w, down_b)
        return (h, *qkv(_rms(h, norm_in, d.eps), qkv_w, qkv_b, q_norm, k_norm, cos, sin, m, cache, t_index))

    def last(h: torch.Tensor, parts: tuple[torch.Tensor, ...], o_w: torch.Tensor, o_b: Any,
             norm_post: torch.Tensor, gu_w: torch.Tensor, gu_b: Any, down_w: torch.Tensor, down_b: Any,
             final_norm: torch.Tensor, lm_w: torch.Tensor, lm_b: Any, out: torch.Tensor) -> None:
        """... -> the final norm -> lm_head; float32 logits written into ``out`` (one
        conversion kernel writes them where the sampler reads them: no extra copy)."""
        h = block(h, parts, o_w, o_b, norm_post, gu_w, gu_b, down_w, down_b)
        logits = torch.nn.functional.linear(_rms(h, final_norm, final_eps), lm_w, lm_b)
        out.copy_(logits)

    return first, mid, last


class FusedLayers:
    """The pieces of one model's decode step; see the module docstring.

    Shapes: ``hidden`` (R, H) with R = groups x m rows; ``cos``/``sin`` (R, 1, head_dim) from
    the model's rotary embedding. The attention (not fused here: its key length changes with the
    step) returns either the merged output (R, Hq*d) (``fused_attention=False``) or the two parts
    of :func:`.attention.fused_parts` ((G, Hkv, m*gq, d), its log-sum-exp, (R, Hkv, gq, d),
    its log-sum-exp), which ``mid``/``last`` merge.
    """

    def __init__(self, model: Any, *, compile: bool, fused_attention: bool) -> None:
        import torch

        self.layers, self.dims, act = pack_layers(model)
        self.final_norm = model.model.norm.weight
        self.final_eps = float(model.model.norm.variance_epsilon)
        self.lm_w, self.lm_b = model.lm_head.weight, model.lm_head.bias
        self.fused_attention = fused_attention
        first, mid, last = _pieces(_qkv_piece(self.dims), _block_piece(self.dims, act), self.dims, self.final_eps)
        self._first: Callable[..., Any] = first
        self._mid: Callable[..., Any] = mid
        self._last: Callable[..., Any] = last
        if compile:
            _allow_recompiles()
            # default mode: no inductor CUDA graphs (the decoder captures the whole step itself);
            # dynamic=None lets a second row count compile one shape-generic version
            self._first = torch.compile(first, fullgraph=True)
            self._mid = torch.compile(mid, fullgraph=True)
            self._last = torch.compile(last, fullgraph=True)

    def forward(self, hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, m: int,
                caches: list[torch.Tensor], t_index: torch.Tensor,
                attend: Callable[[int, tuple[torch.Tensor, ...]], tuple[torch.Tensor, ...]],
                out: torch.Tensor) -> None:
        """The whole forward pass of one decode step, float32 logits (R, V) written into ``out``.

        Layer i writes the step's key and value into ``caches[i]`` (2, R, Hkv, T, d) at position
        ``t_index`` (int64 (R,), each row's own step); ``attend(layer, queries)`` returns the
        attention output parts; ``m`` is the sample slots per prompt (0: plain attention, which
        takes the queries as (R, Hq, 1, d)).
        """
        m_arg = m if self.fused_attention else 0
        lw = self.layers[0]
        q = self._first(hidden, lw.norm_in, lw.qkv_w, lw.qkv_b, lw.q_norm, lw.k_norm, cos, sin, m_arg,
                        caches[0], t_index)
        h = hidden
        for i in range(len(self.layers) - 1):
            parts = attend(i, q)
            lw, nxt = self.layers[i], self.layers[i + 1]
            h, *rest = self._mid(
                h, parts, lw.o_w, lw.o_b, lw.norm_post, lw.gu_w, lw.gu_b, lw.down_w, lw.down_b,
                nxt.norm_in, nxt.qkv_w, nxt.qkv_b, nxt.q_norm, nxt.k_norm, cos, sin, m_arg,
                caches[i + 1], t_index,
            )
            q = tuple(rest)
        lw = self.layers[-1]
        parts = attend(len(self.layers) - 1, q)
        self._last(
            h, parts, lw.o_w, lw.o_b, lw.norm_post, lw.gu_w, lw.gu_b, lw.down_w, lw.down_b,
            self.final_norm, self.lm_w, self.lm_b, out,
        )


def _allow_recompiles(limit: int = 64) -> None:
    """Raise dynamo's per-function recompile limit (8 by default): each batch shape, sampling
    mode and decoder on another model compiles these functions again, and past the limit dynamo
    silently runs them uncompiled."""
    import torch._dynamo

    cfg = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(cfg, name) and getattr(cfg, name) < limit:
            setattr(cfg, name, limit)


def resolve(mode: FuseMode, model: Any) -> Literal["compile", "eager", "off"]:
    """The fuse mode to use for ``model`` ("auto": compile on CUDA with Triton, else off), or
    "off" with a warning when the model's layers cannot be fused."""
    if mode == "off":
        return "off"
    reason = unfusable_reason(model)
    if reason is not None:
        if mode != "auto":
            log.warning("hf: fused layers are not possible for this model (%s); using its own modules", reason)
        return "off"
    if mode == "auto":
        if not str(model.device).startswith("cuda"):
            return "off"
        from ...triton_support import importable

        return "compile" if importable() else "eager"
    return mode
