"""Two tiny tokenizers built offline from GAR texts, for tests (and tiny random models).

``bpe_tokenizer()``: GPT-2 style byte-level BPE (no BOS; ``<|endoftext|>`` is bos/eos/pad).
``trim_offsets=True`` reports a token's offsets without its leading space, ``False`` with it.
``wordlevel_tokenizer()``: one id per word or punctuation run (``Whitespace`` pre-tokenizer),
``[UNK]`` for unseen words, and a ``<s>`` BOS added by ``add_special_tokens=True``.

Both are ``transformers.PreTrainedTokenizerFast`` objects, cached per process: do not mutate them.
``gar_records(profile)`` gives the (cached) default records of a profile.
"""

from __future__ import annotations

from functools import lru_cache

from gar_tasks.generate import GeneratorConfig
from gar_tasks.records import GARRecord

BPE_VOCAB_SIZE = 1000
N_TRAIN_TEXTS = 400  # per profile, for the BPE merges


@lru_cache(maxsize=None)
def gar_records(profile: str = "paper") -> tuple[GARRecord, ...]:
    """All records of ``GeneratorConfig(profile=profile).build()`` (4608), built once."""
    return tuple(GeneratorConfig(profile=profile).build())


def _training_texts() -> list[str]:
    """An evenly spread sample of texts (every family/task) of both profiles."""
    texts = []
    for profile in ("paper", "v1"):
        recs = gar_records(profile)
        step = max(1, len(recs) // N_TRAIN_TEXTS)
        texts += [r.text for r in recs[::step]]
    return texts


@lru_cache(maxsize=None)
def _bpe_core():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=BPE_VOCAB_SIZE, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(_training_texts(), trainer=trainer)
    return tok.to_str()


@lru_cache(maxsize=None)
def bpe_tokenizer(trim_offsets: bool = True):
    """Byte-level BPE (GPT-2 style); ``trim_offsets`` picks whether offsets include the space."""
    from tokenizers import Tokenizer, processors
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer.from_str(_bpe_core())
    tok.post_processor = processors.ByteLevel(trim_offsets=trim_offsets)
    eot = "<|endoftext|>"
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=eot, eos_token=eot,
                                   unk_token=eot, pad_token=eot)


@lru_cache(maxsize=None)
def wordlevel_tokenizer():
    """Word-level tokenizer over every word of both profiles' records, with a ``<s>`` BOS."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    specials = ["[UNK]", "[PAD]", "<s>", "</s>"]
    trainer = trainers.WordLevelTrainer(special_tokens=specials, show_progress=False)
    tok.train_from_iterator((r.text for p in ("paper", "v1") for r in gar_records(p)), trainer=trainer)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", bos)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]",
                                   bos_token="<s>", eos_token="</s>")
