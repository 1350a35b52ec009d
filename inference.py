"""Sample text from a trained checkpoint: prompts given on the command line, or an interactive prompt loop.

    python inference.py --model_path checkpoints/best_model.pt --prompt "The best way to learn programming is" \
        --max_new_tokens 100 --temperature 0.8 --top_k 40
    python inference.py --prompt "Startups are" --prompt "The best essays" --seed 1   # one batch, two prompts
    python inference.py --prompts-file prompts.txt     # one prompt per line, generated in batches of up to 32
    python inference.py --model_path checkpoints/best_model.pt --interactive

Several prompts are decoded together as one left-padded batch (components/generation.py); with
--seed each prompt gets its own generator seeded the same, so each completion is the one that
prompt gets alone. Beam search takes one prompt at a time: several prompts run one after another.
In --interactive mode the prompt has line editing and history (readline, where Python has it);
Ctrl-C stops a generation and keeps the session, Ctrl-C or Ctrl-D at the prompt ends it.

A thin command line over `components.generation`: every flag takes underscores or hyphens
(`--top_k` == `--top-k`), sampling values are validated by `SamplingConfig` before anything is
loaded (a bad value is one error line and exit code 2), and a missing or corrupt checkpoint is one
line and exit code 1. After each completion a report line says how fast it was and how big the KV
cache got: the number that MLA shrinks (kv_latent_dim + rope_head_dim values per token per layer).
The flags, the interactive ':name value' commands and :help are built from the fields of
`SamplingConfig` and `RunSettings` (type, default and help text), so a setting is written once.

Generation stops at max_new_tokens, at <|endoftext|>, or as soon as the decoded text contains a
--stop string (the text is cut just before it). The text is printed while it is generated
(`StreamPrinter`): one prompt token by token; several prompts in their order, each going on live when
its turn comes. Ctrl-C keeps what was printed, and prints the rest of what was generated.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import sys
import time
import warnings
from dataclasses import dataclass, fields, replace
from pathlib import Path

import torch

from common.cli import CommandLine, field_types, parse_value
from components.beam_search import beam_search
from components.generation import SamplingConfig, knob, pad_prompts, stream_tokens
from constants import EOT_TOKEN_ID
from hugging_face.convert import load_any_model
from utils import ENDOFTEXT, get_tokenizer, pick_device

DEFAULT_MODEL_PATH = "checkpoints/best_model.pt"
PROMPT_BATCH = 32           # prompts decoded together at most; more run in batches of this size, in order


def parser_for(annotation):
    """The parser of a setting's values: `common.cli.parse_value` for the field's type."""
    return lambda text: parse_value(text, annotation)


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


MAX_NEW_TOKENS, MAX_BEAMS, MAX_SAMPLES = 100_000, 64, 1_000


@dataclass(frozen=True)
class RunSettings:
    """The settings of a run besides SamplingConfig's knobs, validated the same way (one-line ValueError)."""

    max_new_tokens: int = knob(100, "tokens to generate per completion")
    beams: int = knob(1, "beam search with this many beams when > 1 (sampling flags are ignored)")
    length_penalty: float = knob(1.0, "beam search: score = log p / new_tokens ** length_penalty")
    num_samples: int = knob(1, "completions per prompt (sample i uses seed + i)")

    def __post_init__(self) -> None:
        # upper bounds: what one run may ask for before it allocates (100,000 beams each hold a cache and a
        # row of logits over the whole vocabulary: gigabytes before the first token)
        for name, most in (("max_new_tokens", MAX_NEW_TOKENS), ("beams", MAX_BEAMS), ("num_samples", MAX_SAMPLES)):
            value = getattr(self, name)
            if not (isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= most):
                raise ValueError(f"{name}={value!r}: must be an integer in [1, {most:,}]")
        if not (isinstance(self.length_penalty, (int, float)) and math.isfinite(self.length_penalty)
                and abs(self.length_penalty) <= 10):
            raise ValueError(f"length_penalty={self.length_penalty!r}: must be a number in [-10, 10] (1 = the mean "
                             "log-probability per new token)")


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
                             "DeepseekV3/V2 directory (python -m hugging_face to-hf writes one)")
    parser.add_argument("--prompt", action="append", default=None,
                        help="text to continue (repeatable: the prompts are decoded together, up to 32 per batch; "
                             "default: start from <|endoftext|>)")
    parser.add_argument("--prompts_file", metavar="PATH",
                        help="a UTF-8 text file with one prompt per line (blank lines skipped), added to --prompt")
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


def clean_text(text: str) -> str:
    """Text that any UTF-8 stream can print: bytes that were not UTF-8 (a shell argument or a line
    read as 'surrogateescape') become U+FFFD instead of failing at print() or in the tokenizer."""
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:                       # lone surrogates that no byte produced
        raw = text.encode("utf-8", "surrogatepass")
    return raw.decode("utf-8", "replace")


def encode_prompt(tokenizer, model, prompt: str) -> list[int]:
    ids = tokenizer.encode(prompt, allowed_special={ENDOFTEXT}) or [EOT_TOKEN_ID]
    if max(ids) >= model.cfg.vocab_size:
        raise ValueError(f"prompt token id {max(ids)} is outside the model's vocabulary ({model.cfg.vocab_size})")
    return ids


def cut_at_stops(text: str, stops) -> str:
    """`text` up to the first of the stop strings in it (all of it if none is)."""
    cuts = [text.index(stop) for stop in stops if stop in text]
    return text[:min(cuts)] if cuts else text


class StreamPrinter:
    """Prints completions while they are generated, in prompt order: the first prompt's text as its tokens
    come; a later prompt (generated in the same batch) prints what it has so far when its turn comes, then
    goes on live. Only text that is final is printed: a trailing partial UTF-8 character, and the last
    len(longest stop string) - 1 characters (a stop string may be starting there), wait for the next token.
    """

    def __init__(self, prompts: list[str], stops, first: int = 0, total: int | None = None):
        self.prompts, self.hold = prompts, max((len(stop) for stop in stops), default=1) - 1
        self.first, self.total = first, len(prompts) if total is None else total    # a chunk's place in all
        self.latest, self.done = [""] * len(prompts), [False] * len(prompts)
        self.current, self.shown, self.started = 0, 0, False

    def update(self, row: int, text: str, finished: bool) -> None:
        """Row `row`'s completion so far (cut at its stop string once finished)."""
        self.latest[row], self.done[row] = text, finished
        self._advance()

    def finish(self, texts: list[str]) -> None:
        """Print whatever is left of every prompt + completion (the texts `complete_batch` returns)."""
        for row, text in enumerate(texts):
            self.latest[row], self.done[row] = text[len(self.prompts[row]):], True
        self._advance()

    def _advance(self) -> None:
        while self.current < len(self.prompts):
            if not self.started:
                if self.total > 1:
                    print(f"--- prompt {self.first + self.current + 1}/{self.total} ---")
                print(self.prompts[self.current], end="", flush=True)
                self.started, self.shown = True, 0
            text, finished = self.latest[self.current], self.done[self.current]
            if not finished:
                text = text.rstrip("\ufffd")                      # a character whose bytes are still coming
                text = text[:max(0, len(text) - self.hold)]
            if len(text) > self.shown:
                print(text[self.shown:], end="", flush=True)
                self.shown = len(text)
            if not finished:
                return
            print(flush=True)
            self.current, self.started = self.current + 1, False


def complete_batch(model, tokenizer, prompts: list[str], settings: dict, sample: int,
                   device: torch.device, on_text=None) -> tuple[list[str], str, bool]:
    """Generate one completion of each prompt, all in one batch -> (prompt + completion per prompt, report,
    interrupted). Ctrl-C stops the generation: the text so far is returned, with interrupted=True.
    on_text(row, completion so far, finished): called after each new token of a row (StreamPrinter.update)."""
    ids = [encode_prompt(tokenizer, model, prompt) for prompt in prompts]
    config = sampling_config(settings, sample)
    stops, B = settings["stop"], len(prompts)
    # a batch: every row its own generator, seeded as that prompt alone would be (None: the global RNG)
    row_seeds = [config.seed] * B if B > 1 and config.seed is not None else None
    if row_seeds:
        config = replace(config, seed=None)
    idx, mask = pad_prompts(ids)
    idx, mask = idx.to(device), (mask.to(device) if B > 1 else None)            # (B, T)

    def decode(new_ids: list[int]) -> str:
        return tokenizer.decode([t for t in new_ids if t < tokenizer.n_vocab and t != EOT_TOKEN_ID])

    start, caches, new_ids, interrupted = time.perf_counter(), None, [[] for _ in prompts], False
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            if settings["beams"] > 1:               # one prompt at a time (see the module docstring)
                for b, row in enumerate(ids):
                    out = beam_search(model, torch.tensor([row], device=device), settings["max_new_tokens"],
                                      num_beams=settings["beams"], length_penalty=settings["length_penalty"],
                                      stop_tokens=config.stop_tokens, absorb=settings["absorb"])
                    new_ids[b] = out[0, min(len(row), model.cfg.context_length):].tolist()
            else:
                done = [False] * B
                stream = stream_tokens(model, idx, settings["max_new_tokens"], config, absorb=settings["absorb"],
                                       attention_mask=mask, row_seeds=row_seeds)
                with contextlib.closing(stream):
                    for next_token, step_caches in stream:
                        caches = step_caches        # the caches in use (a full window re-prefills new ones)
                        for b, token in enumerate(next_token[:, 0].tolist()):
                            if not done[b]:
                                new_ids[b].append(token)
                                text = decode(new_ids[b])
                                done[b] = token == EOT_TOKEN_ID or (bool(stops) and any(s in text for s in stops))
                                if on_text is not None:
                                    on_text(b, cut_at_stops(text, stops), done[b])
                        if all(done):
                            break                   # the texts are cut at their stop strings below
        except KeyboardInterrupt:
            interrupted = True
    seconds = max(time.perf_counter() - start, 1e-9)
    for warning in caught:
        print(f"warning: {warning.message}", file=sys.stderr)
    texts = [prompt + cut_at_stops(decode(row), stops) for prompt, row in zip(prompts, new_ids, strict=True)]
    n_new = sum(len(row) for row in new_ids)
    cache = cache_report(caches, model, settings["absorb"]) if caches or settings["beams"] > 1 else "KV cache: none yet"
    report = (f"[{'interrupted (Ctrl-C) after ' if interrupted else ''}{n_new} tokens in {seconds:.2f} s, "
              f"{n_new / seconds:.1f} tokens/s | {cache}]")
    return texts, report, interrupted


def complete(model, tokenizer, prompt: str, settings: dict, sample: int, device: torch.device) -> tuple[str, str]:
    """Generate one completion of `prompt`; returns (prompt + completion, report line)."""
    (text,), report, _ = complete_batch(model, tokenizer, [prompt], settings, sample, device)
    return text, report


def run_prompts(model, tokenizer, prompts: list[str], settings: dict, device: torch.device) -> bool:
    """Print num_samples completions of every prompt; returns False if Ctrl-C stopped it."""
    if settings["beams"] > 1 and len(prompts) > 1:
        print(f"note: beam search takes one prompt at a time: the {len(prompts)} prompts run one after another",
              file=sys.stderr)
    for sample in range(settings["num_samples"]):
        if settings["num_samples"] > 1:
            print(f"--- sample {sample + 1}/{settings['num_samples']} ---")
        # at most PROMPT_BATCH prompts decode together: a 1,000-line prompts file is 32 batches one after
        # another, not one batch whose caches and logits grow with the file (the issue saw 9 GB asked for)
        for first in range(0, len(prompts), PROMPT_BATCH):
            chunk = prompts[first:first + PROMPT_BATCH]
            printer = StreamPrinter(chunk, settings["stop"], first, len(prompts))   # the text as it is generated
            texts, report, interrupted = complete_batch(model, tokenizer, chunk, settings, sample, device,
                                                        on_text=printer.update)
            printer.finish(texts)                                  # the rest (all of it for beam search)
            print(report, flush=True)
            if interrupted:
                return False
    return True


def run_prompt(model, tokenizer, prompt: str, settings: dict, device: torch.device) -> bool:
    return run_prompts(model, tokenizer, [prompt], settings, device)


def read_prompts(args) -> list[str] | None:
    """--prompt (repeatable) and --prompts_file lines -> the prompts, cleaned; None if neither was given."""
    prompts = list(args.prompt or [])
    if args.prompts_file:
        path = Path(args.prompts_file)
        if path.exists() and not path.is_file() and not path.is_dir():     # reading a FIFO would block
            raise ValueError(f"--prompts_file {path}: not a regular file (a pipe, socket or device); pass a text "
                             "file, one prompt per line")
        try:
            lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError as err:
            raise ValueError(f"--prompts_file {path}: {err.strerror or err}") from None
        from_file = [line for line in lines if line.strip()]
        if not from_file:
            raise ValueError(f"--prompts_file {path}: no prompts in it (one prompt per line, blank lines skipped)")
        prompts += from_file
    return [clean_text(p) for p in prompts] if (args.prompt or args.prompts_file) else None


def tolerant_stdio() -> None:
    """Text that the terminal's encoding cannot carry is replaced ('?' or U+FFFD), never a traceback:
    stdout/stderr on print, stdin on input() (e.g. Latin-1 bytes typed into a strict UTF-8 session)."""
    for stream in (sys.stdout, sys.stderr, sys.stdin):
        with contextlib.suppress(AttributeError, ValueError, OSError):
            stream.reconfigure(errors="replace")


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
            updated = {**settings, "absorb": parse_value(value, bool) != (name == "no_absorb")}
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


def line_editing() -> None:
    """Arrow keys, editing and history at the prompt: importing readline is what gives input() them."""
    if sys.stdin.isatty():
        with contextlib.suppress(ImportError):
            import readline  # noqa: F401  (not on every platform: then input() stays plain)


def interactive(model, tokenizer, settings: dict, device: torch.device) -> None:
    print("interactive mode: type a prompt, or :help for commands; Ctrl-C stops a generation; "
          ":quit, Ctrl-D or Ctrl-C at the prompt leaves", flush=True)
    line_editing()
    while True:
        try:
            line = clean_text(input(">>> "))
        except (EOFError, KeyboardInterrupt):          # Ctrl-D or Ctrl-C at the prompt: a clean end
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
        try:
            run_prompt(model, tokenizer, line, settings, device)
        except KeyboardInterrupt:                      # Ctrl-C outside the token loop (tokenizing, printing)
            print("\n[interrupted (Ctrl-C)]", flush=True)
        except ValueError as err:                      # e.g. a token id the model's vocabulary lacks
            print(f"error: {err}", flush=True)


# --- main -------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    # 1) parse and validate everything before touching the checkpoint (exit code 2 on bad input)
    tolerant_stdio()
    parser = build_parser()
    args = parser.parse_args(argv)
    stops = [clean_text(unescape(stop)) for stop in args.stop]
    settings = {name: getattr(args, name) for name in SETTINGS} | {"stop": stops, "absorb": args.absorb}
    try:
        sampling_config(settings)
        device = pick_device(args.device)
        prompts = read_prompts(args)
    except ValueError as err:
        parser.error(str(err))
    try:
        return _load_and_run(args, settings, prompts, device)
    except KeyboardInterrupt:                           # Ctrl-C while loading, or outside interactive mode
        print("\ninference.py: interrupted", file=sys.stderr)
        return 130


def _load_and_run(args, settings: dict, prompts: list[str] | None, device: torch.device) -> int:
    # 2) load the model (exit code 1 with the loader's one-line message)
    try:
        model, _meta = load_any_model(args.model_path, device=device)
    except (OSError, ValueError, RuntimeError, KeyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    model.eval()
    tokenizer = get_tokenizer()
    n_params = sum(p.numel() for p in model.parameters())
    print(f"loaded {args.model_path}: {model.cfg.attention} attention, {n_params / 1e6:.2f}M parameters, "
          f"context {model.cfg.context_length}, device {device}", flush=True)
    # 3) the prompts (batches of up to PROMPT_BATCH), then (optionally) the interactive loop
    if prompts is not None or not args.interactive:
        try:
            if not run_prompts(model, tokenizer, prompts or [""], settings, device) and not args.interactive:
                return 130                               # Ctrl-C: what was generated is printed above
        except ValueError as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
    if args.interactive:
        interactive(model, tokenizer, settings, device)
    return 0


if __name__ == "__main__":
    sys.exit(main())
