"""Sample text from a trained checkpoint: one prompt, or an interactive prompt loop.

    python inference.py --model_path checkpoints/best_model.pt --prompt "The best way to learn programming is" \
        --max_new_tokens 100 --temperature 0.8 --top_k 40
    python inference.py --model_path checkpoints/best_model.pt --interactive

A thin command line over `components.generation`: every flag takes underscores or hyphens
(`--top_k` == `--top-k`), sampling values are validated by `SamplingConfig` before anything is
loaded (a bad value is one error line and exit code 2), and a missing or corrupt checkpoint is one
line and exit code 1. After each completion a report line says how fast it was and how big the KV
cache got: the number that MLA shrinks (kv_latent_dim + rope_head_dim values per token per layer).
The flags, the interactive ':name value' commands and :help are built from the fields of
`SamplingConfig` and `RunSettings` (type, default and help text), so a setting is written once.

Generation stops at max_new_tokens, at <|endoftext|>, or as soon as the decoded text contains a
--stop string (the text is cut just before it).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import sys
import time
import warnings
from dataclasses import dataclass, fields

import torch

from cli import CommandLine, field_types
from components.beam_search import beam_search
from components.generation import SamplingConfig, knob, stream_tokens
from constants import EOT_TOKEN_ID
from utils import ENDOFTEXT, get_tokenizer, pick_device

DEFAULT_MODEL_PATH = "checkpoints/best_model.pt"
def parser_for(annotation):
    """The parser of a setting's values, from its field type: int or float, optionally None ('none' or 'off')."""
    optional = type(None) in getattr(annotation, "__args__", ())
    kind = int if annotation in (int, int | None) else float
    expected = ("an integer" if kind is int else "a number") + (" or 'none'" if optional else "")

    def parse(text: str):
        if optional and text.strip().lower() in ("none", "off"):
            return None
        try:
            return kind(text)
        except ValueError:
            raise ValueError(f"expected {expected}, got {text!r}") from None
    return parse


def flag_type(parse):
    """Turn a parser's ValueError into argparse's error, so the message is ours."""
    def convert(text: str):
        try:
            return parse(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None
    return convert


def unescape(text: str) -> str:
    r"""Let a stop string typed in a shell or at the prompt say \n or \t."""
    return text.replace("\\n", "\n").replace("\\t", "\t")


def on_off(text: str) -> bool:
    if text.strip().lower() in ("on", "true", "yes", "1"):
        return True
    if text.strip().lower() in ("off", "false", "no", "0"):
        return False
    raise ValueError(f"expected on or off, got {text!r}")


@dataclass(frozen=True)
class RunSettings:
    """The settings of a run besides SamplingConfig's knobs, validated the same way (one-line ValueError)."""

    max_new_tokens: int = knob(100, "tokens to generate per completion")
    beams: int = knob(1, "beam search with this many beams when > 1 (sampling flags are ignored)")
    length_penalty: float = knob(1.0, "beam search: score = log p / new_tokens ** length_penalty")
    num_samples: int = knob(1, "completions per prompt (sample i uses seed + i)")

    def __post_init__(self) -> None:
        for name in ("max_new_tokens", "beams", "num_samples"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)!r}: must be an integer >= 1")
        if not math.isfinite(self.length_penalty):
            raise ValueError(f"length_penalty={self.length_penalty!r}: must be a finite number")


# The flags, the ':name value' commands and :help all come from the fields of these two dataclasses.
NOT_SETTINGS = ("stop_tokens",)     # the command line stops at <|endoftext|> and at --stop strings instead
CLI_DEFAULTS = {"temperature": 0.8}  # a little cooler than the model's own distribution reads better


def settings_of(*classes) -> dict:
    """name -> (parser, default, help) for every field of `classes` (but NOT_SETTINGS)."""
    table = {}
    for cls in classes:
        types = field_types(cls)
        for f in fields(cls):
            if f.name not in NOT_SETTINGS:
                table[f.name] = (parser_for(types[f.name]), CLI_DEFAULTS.get(f.name, f.default), f.metadata["help"])
    return table


SETTINGS = settings_of(RunSettings, SamplingConfig)
STOP_HELP = "stop when the text contains this (repeatable)"
ABSORB_HELP = "MLA: decompress the cache into keys and values (naive path) instead of absorbing (the default)"
HELP = "\n".join([
    "commands (a line starting with ':'; anything else is a prompt), e.g. :temperature 1.1  :top_k none",
    *(f"  :{name:<22}{help_text}" for name, (_, _, help_text) in SETTINGS.items()),
    f"  :{'absorb on|off':<22}MLA: absorbed attention (on) or the naive path, as --no_absorb (off)",
    f"  :{'stop <text>':<22}{STOP_HELP}; ':stop none' clears them",
    "  :show   current settings      :help   this text      :quit or :q (or end of input)   leave",
])


def pick(cls, settings: dict) -> dict:
    """The values in `settings` of cls's fields."""
    return {f.name: settings[f.name] for f in fields(cls) if f.name in settings}


def sampling_config(settings: dict, sample: int = 0) -> SamplingConfig:
    """Validate every setting (one-line ValueError) and return the sampling part for sample i."""
    RunSettings(**pick(RunSettings, settings))
    if any(not stop for stop in settings["stop"]):
        raise ValueError("stop: a stop string must not be empty")
    values = pick(SamplingConfig, settings)
    if values["seed"] is not None:
        values["seed"] += sample
    return SamplingConfig(**values, stop_tokens=(EOT_TOKEN_ID,))


def build_parser() -> CommandLine:
    parser = CommandLine(prog="inference.py", description="Sample from a DeepSeek-from-scratch checkpoint.")
    parser.add_argument("--model_path", "--checkpoint", dest="model_path", default=DEFAULT_MODEL_PATH,
                        help="best_model.pt, best_model.safetensors (with its .json beside it), or a Hugging Face "
                             "DeepseekV3/V2 directory (python -m checkpoint to-hf writes one)")
    parser.add_argument("--prompt", default=None, help="text to continue (default: start from <|endoftext|>)")
    parser.add_argument("--interactive", "-i", action="store_true", help="prompt loop on stdin; type :help")
    for name, (parse, default, help_text) in SETTINGS.items():
        parser.add_argument(f"--{name}", dest=name, type=flag_type(parse), default=default, help=help_text)
    parser.add_argument("--stop", action="append", default=[], help=STOP_HELP)
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 or mps (default: best available)")
    parser.add_argument("--no_absorb", dest="absorb", action="store_false", help=ABSORB_HELP)
    return parser


# --- one completion ---------------------------------------------------------------------------------

def cache_report(caches: list | None, model, absorb: bool) -> str:
    """Bytes actually held by the per-layer caches, and what one token costs per layer."""
    if not caches:
        return "KV cache: none (beam search recomputes full forwards)"
    kib = sum(cache.nbytes() for cache in caches) / 1024
    kind = model.cfg.attention
    path = f"{kind} {'absorbed' if absorb else 'naive'}" if kind == "mla" else kind
    per_token = caches[0].values_per_token()
    if per_token == 0:
        return f"KV cache {kib:.1f} KiB ({path}: a running state of fixed size per layer, x {len(caches)} layers)"
    return (f"KV cache {kib:.1f} KiB ({path}: {per_token} values/token/layer x {len(caches)} layers "
            f"x {caches[0].length} tokens)")


def complete(model, tokenizer, prompt: str, settings: dict, sample: int, device: torch.device) -> tuple[str, str]:
    """Generate one completion of `prompt`; returns (prompt + completion, report line)."""
    ids = tokenizer.encode(prompt, allowed_special={ENDOFTEXT}) or [EOT_TOKEN_ID]
    if max(ids) >= model.cfg.vocab_size:
        raise ValueError(f"prompt token id {max(ids)} is outside the model's vocabulary ({model.cfg.vocab_size})")
    idx = torch.tensor([ids], dtype=torch.long, device=device)                  # (1, T)
    config = sampling_config(settings, sample)
    stops = settings["stop"]

    def decode(new_ids: list[int]) -> str:
        return tokenizer.decode([t for t in new_ids if t < tokenizer.n_vocab and t != EOT_TOKEN_ID])

    start, caches, new_ids = time.perf_counter(), None, []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if settings["beams"] > 1:
            out = beam_search(model, idx, settings["max_new_tokens"], num_beams=settings["beams"],
                              length_penalty=settings["length_penalty"], stop_tokens=config.stop_tokens,
                              absorb=settings["absorb"])
            new_ids = out[0, min(len(ids), model.cfg.context_length):].tolist()
        else:
            stream = stream_tokens(model, idx, settings["max_new_tokens"], config, absorb=settings["absorb"])
            with contextlib.closing(stream):
                for next_token, step_caches in stream:
                    caches = step_caches        # the caches in use (a full window re-prefills new ones)
                    new_ids.append(next_token.item())
                    if stops and any(stop in decode(new_ids) for stop in stops):
                        break                                   # the text is cut at the stop below
    seconds = max(time.perf_counter() - start, 1e-9)
    for warning in caught:
        print(f"warning: {warning.message}", file=sys.stderr)
    text = decode(new_ids)
    cuts = [text.index(stop) for stop in stops if stop in text]
    if cuts:
        text = text[:min(cuts)]
    report = (f"[{len(new_ids)} tokens in {seconds:.2f} s, {len(new_ids) / seconds:.1f} tokens/s | "
              f"{cache_report(caches, model, settings['absorb'])}]")
    return prompt + text, report


def run_prompt(model, tokenizer, prompt: str, settings: dict, device: torch.device) -> None:
    for sample in range(settings["num_samples"]):
        if settings["num_samples"] > 1:
            print(f"--- sample {sample + 1}/{settings['num_samples']} ---")
        text, report = complete(model, tokenizer, prompt, settings, sample, device)
        print(text)
        print(report, flush=True)


# --- interactive mode -----------------------------------------------------------------------------

def apply_command(line: str, settings: dict) -> tuple[dict, str | None]:
    """':name value' -> (new settings, message). Invalid input leaves the settings unchanged."""
    name, _, value = line[1:].strip().partition(" ")
    name, value = name.lstrip("-").replace("-", "_"), value.strip()
    if name in ("help", "h", "?"):
        return settings, HELP
    if name == "show":
        return settings, "  ".join(f"{key}={val!r}" for key, val in settings.items())
    key = "absorb" if name in ("absorb", "no_absorb") else name
    try:
        if name == "stop":
            if not value:
                raise ValueError(":stop needs a text, or 'none' to clear")
            stops = [] if value.lower() == "none" else [*settings["stop"], unescape(value)]
            updated = {**settings, "stop": stops}
        elif name in ("absorb", "no_absorb"):
            updated = {**settings, "absorb": on_off(value) != (name == "no_absorb")}
        elif name in SETTINGS:
            if not value:
                raise ValueError(f":{name} needs a value")
            try:
                parsed = SETTINGS[name][0](value)
            except ValueError as err:
                raise ValueError(f"{name}: {err}") from None
            updated = {**settings, name: parsed}
        else:
            raise ValueError(f"unknown command ':{name}'; type :help")
        sampling_config(updated)                    # validate before accepting
    except ValueError as err:
        return settings, f"error: {err}"
    return updated, f"{key} = {updated[key]!r}"


def interactive(model, tokenizer, settings: dict, device: torch.device) -> None:
    print("interactive mode: type a prompt, or :help for commands, :quit to leave", flush=True)
    while True:
        try:
            line = input(">>> ")
        except EOFError:
            print()
            return
        if not line.strip():
            continue
        if line.strip() in (":quit", ":q", ":exit"):
            return
        if line.startswith(":"):
            settings, message = apply_command(line, settings)
            print(message, flush=True)
            continue
        run_prompt(model, tokenizer, line, settings, device)


# --- main -------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    # 1) parse and validate everything before touching the checkpoint (exit code 2 on bad input)
    parser = build_parser()
    args = parser.parse_args(argv)
    stops = [unescape(stop) for stop in args.stop]
    settings = {name: getattr(args, name) for name in SETTINGS} | {"stop": stops, "absorb": args.absorb}
    try:
        sampling_config(settings)
        device = pick_device(args.device)
    except ValueError as err:
        parser.error(str(err))
    # 2) load the model (exit code 1 with the loader's one-line message)
    from checkpoint import load_model

    try:
        model, _meta = load_model(args.model_path, device=device)
    except (OSError, ValueError, RuntimeError, KeyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    model.eval()
    tokenizer = get_tokenizer()
    n_params = sum(p.numel() for p in model.parameters())
    print(f"loaded {args.model_path}: {model.cfg.attention} attention, {n_params / 1e6:.2f}M parameters, "
          f"context {model.cfg.context_length}, device {device}", flush=True)
    # 3) one prompt, then (optionally) the interactive loop
    if args.prompt is not None or not args.interactive:
        run_prompt(model, tokenizer, args.prompt or "", settings, device)
    if args.interactive:
        interactive(model, tokenizer, settings, device)
    return 0


if __name__ == "__main__":
    sys.exit(main())
