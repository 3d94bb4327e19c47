"""Tiny randomly initialised models, saved as ordinary model folders, for fast tests.

They go through the same loading code as a real local model folder. The BERT, MPNet and Llama ones
reuse the bundled MiniLM WordPiece tokenizer; the GPT-2 one gets a byte-level BPE tokenizer
trained here on a few sentences (no pad token, like the real GPT-2).
"""

from pathlib import Path

import torch
from tokenizers import ByteLevelBPETokenizer
from transformers import (AutoTokenizer, BertConfig, BertModel, GPT2Config, GPT2Model, GPT2TokenizerFast,
                          LlamaConfig, LlamaModel, MPNetConfig, MPNetModel)

from llm_meta.modeling.model_files import resolve_model_path

CORPUS = [
    "how do i reset my card pin", "my card has not arrived yet", "what is the exchange rate today",
    "set an alarm for six am", "play some jazz music", "will it rain tomorrow in paris",
    "book a table for two", "the quick brown fox jumps over the lazy dog",
] * 4


def make_tiny_model(kind: str, folder: Path) -> Path:
    # Seeded: the same weights in every run, so no test passes or fails with the draw of a random init
    # (an online-learning test once failed on one draw in a clean clone).
    torch.manual_seed(0)
    if kind == "gpt2":
        bpe = ByteLevelBPETokenizer()
        bpe.train_from_iterator(CORPUS, vocab_size=300, min_frequency=1, special_tokens=["<|endoftext|>"])
        tok = GPT2TokenizerFast(tokenizer_object=bpe._tokenizer, eos_token="<|endoftext|>",
                                bos_token="<|endoftext|>", unk_token="<|endoftext|>")
        model = GPT2Model(GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=4, n_positions=128))
    else:
        tok = AutoTokenizer.from_pretrained(resolve_model_path("all-MiniLM-L6-v2"))
        if kind == "bert":
            model = BertModel(BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2,
                                         num_attention_heads=4, intermediate_size=64), add_pooling_layer=False)
        elif kind == "mpnet":  # relative position bias computed once by the encoder, then fed to each layer
            model = MPNetModel(MPNetConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2,
                                           num_attention_heads=4, intermediate_size=64), add_pooling_layer=False)
        else:
            model = LlamaModel(LlamaConfig(vocab_size=tok.vocab_size, hidden_size=32, intermediate_size=64,
                                           num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                           pad_token_id=tok.pad_token_id))
    model.config.architectures = None  # as a bare config: the loader must not rely on this field
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder
