"""The ``hf`` inference backend: local transformers models with the project's own decoders.

The pieces, one file each: ``backend.py`` (the backend and its options), ``loop_decoder.py``
(the portable decoding loop), ``shared_decoder.py`` (the GPU decoder: one prompt cache for its
K samples, refilled slots, CUDA graphs), ``buffers.py`` (its fixed-address device buffers),
``fused_layers.py``, ``attention.py`` (shared-prefix attention), ``attention_kernel.py`` and
``sampling_kernel.py`` (Triton kernels, code in ``*_triton.py``), ``sampling.py`` and
``candidate_sampling.py`` (counter-based token selection), ``transformers_api.py`` (the names
transformers uses for its cache) and ``fallbacks.py`` (which piece failed).
"""

from .backend import HFBackend, Options, create

__all__ = ["HFBackend", "Options", "create"]
