"""The online softmax's update (FlashAttention's), shared by the Triton attention kernels of the
``hf`` backend's decoder and of the NLI scorers' DeBERTa attention.

Imported only by those kernels' Triton modules (it needs Triton, which CPU installs may lack);
Triton inlines it into each kernel, so sharing it costs nothing at run time."""

# mypy: ignore-errors
# ruff: noqa: ANN001, ANN202

import triton
import triton.language as tl


@triton.jit
def online_softmax_step(s, top, total):
    """One block of scores ``s`` (queries x keys, float32, -inf where masked) into the running
    max ``top`` and sum ``total`` of each query: returns the block's unnormalised
    probabilities, the factor ``alpha`` that rescales what was accumulated before, the new max
    and the new sum. A query whose keys so far are all masked keeps -inf and is shifted by 0
    instead (exp(-inf) = 0, never NaN)."""
    new_top = tl.maximum(top, tl.max(s, 1))
    shift = tl.where(new_top == float("-inf"), 0.0, new_top)
    p = tl.exp(s - shift[:, None])
    alpha = tl.exp(top - shift)
    return p, alpha, new_top, total * alpha + tl.sum(p, 1)
