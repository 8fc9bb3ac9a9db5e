"""Shared fixtures: tiny random transformers models built offline in seconds.

They run the real transformers / TRL / PEFT code paths on CPU. Area-specific fixtures live in
the conftest.py of each test folder.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("SELFLEARN_NO_PROGRESS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if "PYTEST_XDIST_WORKER_COUNT" in os.environ:
    # pytest -n N: each worker gets its share of the cores for torch's thread pool (read when torch
    # is first imported, here and in the subprocesses tests start); N workers each spinning on every
    # core slow one another down instead of overlapping
    _share = (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, _share)))

#: test files that start Ray (a local cluster per session, or their own): under pytest -n they all
#: run on one worker, so that one machine does not hold several Ray clusters competing for the same
#: cores and shared memory
RAY_TEST_FILES = {"test_ray.py", "test_cluster.py", "test_node_loss.py", "test_faults.py", "test_engine.py",
                  "test_ray_overhead.py"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Groups for ``pytest -n N --dist loadgroup`` (the README's test command): the Ray files on
    one worker; a module whose tests share a module-scoped fixture (a Triton-interpreter run of a
    minute, a served model) on one worker, which builds it once; every other test on its own,
    the ``slow`` ones first."""
    for item in items:
        if item.path.name in RAY_TEST_FILES:
            item.add_marker(pytest.mark.xdist_group("ray"))
        elif _uses_module_fixture(item):
            item.add_marker(pytest.mark.xdist_group(item.nodeid.split("::")[0]))
    if "PYTEST_XDIST_WORKER" in os.environ:
        # xdist hands out the groups largest first, then single tests in collection order: the
        # slow ones first, so that the run does not end on one worker finishing a long test. A
        # group keeps its own order (test_engine's cluster tests run before the Ray session starts)
        items.sort(key=lambda item: item.get_closest_marker("xdist_group") is not None
                   or item.get_closest_marker("slow") is None)


def _uses_module_fixture(item: pytest.Item) -> bool:
    info = getattr(item, "_fixtureinfo", None)  # pytest's own record of the fixtures a test uses
    defs = info.name2fixturedefs.values() if info is not None else ()
    return any(chain and chain[-1].scope == "module" for chain in defs)

#: encyclopedic sentences the tiny tokenizers are trained on (also tests/scoring/conftest.py)
FACTS = [
    "The Eiffel Tower is a wrought-iron lattice tower in Paris, France.",
    "Mont Blanc is the highest mountain in the Alps, rising 4,805 metres above sea level.",
    "The Last Supper is a mural painting by Leonardo da Vinci, finished around 1498.",
    "A white dwarf is a stellar core remnant composed mostly of electron-degenerate matter.",
    "Keynesian economics holds that aggregate demand drives output in the short run.",
    "RNA editing changes the nucleotide sequence of an RNA molecule after transcription.",
    "Nirvana was an American rock band formed in Aberdeen, Washington, in 1987.",
]

CORPUS = [
    *FACTS,
    "Who wrote the novel? What is the capital of France? When was the tower built?",
    "Answer the question after reading the text. Question: Text: Answer:",
] * 4

CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_tiny_tokenizer(path: Path, vocab_size: int = 300) -> object:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    special = ["<unk>", "<pad>", "<|im_start|>", "<|im_end|>", "<s>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        pad_token="<pad>",
        eos_token="<|im_end|>",
        bos_token="<s>",
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(str(path))
    return fast


def build_tiny_llama(path: Path, seed: int = 0) -> Path:
    """A 2-layer Llama with a trained BPE tokenizer and a ChatML template, saved to ``path``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = build_tiny_tokenizer(path)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tok),  # type: ignore[arg-type]
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        pad_token_id=tok.pad_token_id,  # type: ignore[attr-defined]
        eos_token_id=tok.eos_token_id,  # type: ignore[attr-defined]
        bos_token_id=tok.bos_token_id,  # type: ignore[attr-defined]
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)
    model.save_pretrained(str(path))
    return path


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Path of a tiny random Llama checkpoint (session-scoped: built once)."""
    return str(build_tiny_llama(tmp_path_factory.mktemp("tiny-llama")))


@pytest.fixture()
def run_dir(tmp_path: Path) -> str:
    return str(tmp_path / "run")
