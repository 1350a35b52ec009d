"""python -m hugging_face to-hf CHECKPOINT OUT_DIR | from-hf HF_DIR OUT.pt (the conversions are convert.py)."""

from __future__ import annotations

import argparse
import sys

from common.cli import CommandLine
from hugging_face.convert import HFFormatError, export_hf, import_hf
from training.checkpoint import CheckpointError


def build_parser() -> argparse.ArgumentParser:
    parser = CommandLine(prog="python -m hugging_face", description="Convert checkpoints to and from the Hugging Face "
                         "format (DeepseekV3 for sigmoid routing, DeepseekV2 for softmax routing).")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=CommandLine)
    to_hf = commands.add_parser("to-hf", help="our checkpoint -> config.json + model.safetensors (+ tokenizer)")
    to_hf.add_argument("checkpoint", help="a .pt (or .safetensors) checkpoint written by train.py / the Trainer")
    to_hf.add_argument("out_dir", help="a new (or empty) directory for the Hugging Face files")
    to_hf.add_argument("--force", action="store_true", help="overwrite files in a non-empty OUT_DIR")
    from_hf = commands.add_parser("from-hf", help="a DeepseekV3/V2 directory -> our checkpoint")
    from_hf.add_argument("hf_dir", help="directory with config.json and model.safetensors")
    from_hf.add_argument("out", help="our checkpoint to write (.pt)")
    from_hf.add_argument("--context-length", type=int, metavar="T",
                         help="RoPE table length (default: the model's max_position_embeddings)")
    from_hf.add_argument("--force", action="store_true", help="overwrite OUT if it exists")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "to-hf":
            written = export_hf(args.checkpoint, args.out_dir, force=args.force)
            print(f"wrote {', '.join(p.name for p in written)} to {args.out_dir}; load it with "
                  f"transformers.AutoModelForCausalLM.from_pretrained({str(args.out_dir)!r})")
        else:
            path = import_hf(args.hf_dir, args.out, force=args.force, context_length=args.context_length)
            print(f"wrote {path}; sample from it with: python inference.py --model_path {path}")
    except (HFFormatError, CheckpointError, OSError) as err:
        print(f"python -m hugging_face {args.command}: error: {err}", file=sys.stderr)
        return 1 if isinstance(err, OSError) else 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
