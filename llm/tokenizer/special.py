"""The special tokens llmforge's tokenizers carry, and the byte alphabet every BPE starts from.

Plain constants, apart from the tokenizer code, so the job specs that name them (and the
control plane that validates those specs) need no tokenizer library.
"""

EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"
BOS_TOKEN = "<|bos|>"
MASK_TOKEN = "<|mask|>"
BYTE_ALPHABET_SIZE = 256
