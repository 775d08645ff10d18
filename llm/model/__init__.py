from llm.model.config import ModelConfig
from llm.model.encoders import EncoderDecoder, EncoderLM, build_model
from llm.model.gpt import GPT

__all__ = ["GPT", "EncoderDecoder", "EncoderLM", "ModelConfig", "build_model"]
