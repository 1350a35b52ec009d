"""The model, one idea per file. Importable with torch alone; never imports the top level.

    from components import DeepSeekModel, ModelConfig
    model = DeepSeekModel(ModelConfig(...))

The package exports the model, its config and the decoding entry points; everything else is imported
from its own file (`from components.router import Router`)."""
from components.beam_search import beam_search
from components.config import ModelConfig
from components.deepseek_model import DeepSeekModel
from components.generation import SamplingConfig, generate, stream_tokens

__all__ = ["DeepSeekModel", "ModelConfig", "SamplingConfig", "beam_search", "generate", "stream_tokens"]
