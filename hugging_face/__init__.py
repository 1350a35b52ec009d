"""The Hugging Face interop: our DeepSeekModel <-> transformers' DeepseekV3/V2 (`convert.py`, the one place where
our weight names meet theirs), and its command line, `python -m hugging_face to-hf | from-hf`."""
