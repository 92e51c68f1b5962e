"""`vlmkit data synth|split|check`: generate synthetic datasets, split data reproducibly, validate data files."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..data.formats import DATA_FORMATS, read_records, scan_samples
from ..data.split import DEFAULT_RATIOS, split_dataset
from ..data.synthetic import SYNTHETIC, write_dataset
from ..data.synthetic.writer import LAYOUTS
from ..errors import ConfigError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="generate, split and check datasets",
                       description="Generate synthetic datasets, split data into train/valid/test, validate data.")
    actions = p.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    _add_synth(actions)
    _add_split(actions)
    _add_check(actions)


def _add_synth(actions: argparse._SubParsersAction) -> None:
    p = actions.add_parser("synth", help="write a synthetic dataset",
                           description="Write a deterministic synthetic dataset (LLaVA JSON + images, or a captcha "
                                       "folder of <label>.png files).")
    p.add_argument("kind", choices=SYNTHETIC.names(), help="what to generate")
    p.add_argument("--n", type=int, required=True, help="number of samples")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--seed", type=int, default=0, help="random seed (use another seed for held-out data)")
    p.add_argument("--image-size", type=int, default=None, metavar="PX",
                   help="canvas size of shapes/caption images; width of captcha images")
    p.add_argument("--length", type=int, default=None, metavar="N", help="captcha only: characters per captcha "
                   "(default: 4)")
    p.add_argument("--layout", choices=LAYOUTS, default="llava", help="'folder' (captcha only): <label>.png files")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    p.set_defaults(run=run_synth)


def _add_split(actions: argparse._SubParsersAction) -> None:
    p = actions.add_parser("split", help="split a data file or image folder into train/valid/test",
                           description="Split reproducibly: a data file gives train/valid/test files in its "
                                       "format; an image folder gives train/ valid/ test/ subfolders.")
    p.add_argument("src", type=Path, help="data file (JSON, JSONL, CSV) or image folder")
    p.add_argument("--ratios", type=float, nargs=3, default=list(DEFAULT_RATIOS), metavar=("TRAIN", "VALID", "TEST"),
                   help="fractions summing to 1 (default: 0.8 0.05 0.15)")
    p.add_argument("--seed", type=int, default=0, help="shuffle seed")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: next to / inside SRC)")
    p.add_argument("--overwrite", action="store_true", help="replace existing split outputs")
    p.set_defaults(run=run_split)


def _add_check(actions: argparse._SubParsersAction) -> None:
    p = actions.add_parser("check", help="validate a dataset before training",
                           description="Read and validate every sample (roles, turns, <image> markers, image "
                                       "files) and print a report. Exit status 1 when there are problems.")
    p.add_argument("file", type=Path, help="data file or image folder")
    p.add_argument("--image-root", type=Path, default=None, help="folder image paths are relative to")
    p.add_argument("--format", choices=DATA_FORMATS.names(), default=None, help="skip format detection")
    p.add_argument("--skip-bad", action="store_true",
                   help="problems are expected: report them but exit 0 (training with --skip-bad drops them)")
    p.add_argument("--all", action="store_true", help="list every problem, not only the first ones")
    p.set_defaults(run=run_check)


def run_synth(args: argparse.Namespace) -> int:
    options = {} if args.image_size is None else {"image_size": args.image_size}
    if args.length is not None:
        if args.kind != "captcha":
            raise ConfigError(f"--length applies to captcha data only, not '{args.kind}'")
        options["length"] = args.length
    path = write_dataset(args.kind, args.n, args.out, args.seed, layout=args.layout, overwrite=args.overwrite,
                         **options)
    print(f"wrote {args.n} {args.kind} samples (seed {args.seed}) to {path}")
    return 0


def run_split(args: argparse.Namespace) -> int:
    written = split_dataset(args.src, args.ratios, args.seed, args.out, overwrite=args.overwrite)
    for name, path in written.items():
        print(f"{name:<6}{_count(path):>8}  {path}")
    return 0


def _count(path: Path) -> int:
    if path.is_dir():
        return sum(1 for p in path.iterdir() if p.is_file())
    return len(read_records(path))


def run_check(args: argparse.Namespace) -> int:
    samples, report = scan_samples(args.file, args.image_root, args.format)
    print(report.describe(None if args.all else 20))
    if report.ok:
        images = sum(len(s.images) for s in samples)
        print(f"ok: {len(samples)} samples, {images} images")
        return 0
    print(f"{report.skipped} bad samples: " + ("they would be skipped with --skip-bad" if args.skip_bad
                                                 else "fix them, or train with --skip-bad to drop them"))
    return 0 if args.skip_bad else 1
