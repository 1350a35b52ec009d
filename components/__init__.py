"""The model, one idea per file. Importable with torch alone; never imports the top level.

    from components import DeepSeekModel, ModelConfig
    model = DeepSeekModel(ModelConfig(...))

The package exports the model, its config and the sampling entry points; everything else is imported
from its own file (`from components.router import Router`). `beam_search` stays the module's name (chapter 7
reads `components.beam_search.sequence_log_prob`): the function is `DeepSeekModel.beam_search`."""
from components.config import ModelConfig
from components.deepseek_model import DeepSeekModel
from components.generation import SamplingConfig, generate, stream_tokens

__all__ = ["DeepSeekModel", "ModelConfig", "SamplingConfig", "generate", "stream_tokens"]
