"""The zoo's shared tokenizer: byte-level BPE trained on the corpus' train split."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # transformers is imported lazily so that `import harness.models.zoo` stays fast
    from transformers import PreTrainedTokenizerFast

EOS_TOKEN = "<|endoftext|>"  # id 0; also BOS and UNK, as in GPT-2
PAD_TOKEN = "<pad>"  # id 1
SPECIAL_TOKENS = (EOS_TOKEN, PAD_TOKEN)  # order fixes the ids


def train_tokenizer(docs: list[str], vocab_size: int = 2048) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer (GPT-2 style) on ``docs``.

    Training takes well under a second on the zoo corpus and is deterministic: the
    same documents give a byte-identical ``tokenizer.json``.

    Args:
        docs: Training texts, usually ``corpus_documents("train")``.
        vocab_size: Vocabulary size, the special tokens and 256 byte symbols included.

    Returns:
        A transformers fast tokenizer with ``<|endoftext|>`` = 0 as BOS/EOS/UNK and
        ``<pad>`` = 1. It adds no special tokens when encoding.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte is encodable
        show_progress=False,  # library code never prints
    )
    tok.train_from_iterator(docs, trainer=trainer)
    # In transformers 5 this class is an alias of TokenizersBackend.
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=EOS_TOKEN,
        eos_token=EOS_TOKEN,
        unk_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
    )
