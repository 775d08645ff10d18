from llm.model.config import ModelConfig
from llm.model.gpt import GPT

__all__ = ["GPT", "ModelConfig"]
