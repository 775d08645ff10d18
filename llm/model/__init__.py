"""The Transformer family: one config (``config``), its parts (``layers``), the decoder
(``gpt``), the encoder and encoder-decoder (``encoders``), sizing and compute-optimal planning.

Only the config is exported here, so that reading or validating a ModelConfig (the control
plane does, in every train spec) never imports torch.
"""

from llm.model.config import ModelConfig

__all__ = ["ModelConfig"]
