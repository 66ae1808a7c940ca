"""``ma2mi``: the project's command line (``[project.scripts]`` in pyproject.toml).

``ma2mi predict PATH --onset N --apex N`` applies a final model (``models/final/<arm>.json`` + ``.pt``, written by
the ``final_<arm>`` stages) to one clip, with the training preprocessing (:mod:`pipeline.predict`), prints JSON
(class probabilities and the predicted class) and writes a heat-map overlay PNG on the aligned onset face.
``ma2mi predict --batch clips.csv`` does it for many clips (columns ``path, onset, apex`` or
``path, onset_s, apex_s``; relative paths are relative to the CSV) and prints a JSON list.

PATH is a video file or a folder of frames; frame numbers follow :mod:`pipeline.clips` (folders: the number at
the end of the file name, e.g. ``reg_img46.jpg`` is 46; videos: 0-based; ``--onset-s``/``--apex-s``: seconds,
videos only).

Exit status: 0; 2 with one line ``ma2mi predict: error: ...`` on stderr for a problem with the input (no face on
the onset frame, a frame out of range, a file that is not a model card, an arm without a final model, a bad
argument); in a batch, every clip is tried, failed ones carry ``"error"`` in the JSON, and the status is 2 if one
failed.

Example:
    ma2mi predict data/demo/micro/Cropped/sub01/EP02_01f --onset 46 --apex 59 --arm ma2mi --out predictions/
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from pipeline.cards import NotAModelCardError
from pipeline.clips import InputError, read_clip

__all__ = ["main", "parser"]

PROG = "ma2mi"
USER_ERRORS = (InputError, NotAModelCardError)  # exit status 2, one line


def parser() -> argparse.ArgumentParser:
    """The ``ma2mi`` argument parser (subcommand ``predict``)."""
    top = argparse.ArgumentParser(prog=PROG, description="MA2MI micro-expression recognition: apply a trained model.")
    commands = top.add_subparsers(dest="command", required=True)
    predict = commands.add_parser(
        "predict", help="classify a clip (video or folder of frames) and write a heat-map overlay",
        description="Classify the micro-expression between an onset and an apex frame with a final model, with the "
                    "training preprocessing; print JSON, write a heat-map PNG on the aligned onset face.")
    predict.add_argument("path", nargs="?", type=Path, help="a video file or a folder of frames (not with --batch)")
    frames = predict.add_argument_group("frames (one pair)")
    frames.add_argument("--onset", type=int, help="onset frame: the number in the file name (folders), 0-based "
                                                  "index (videos)")
    frames.add_argument("--apex", type=int, help="apex frame, as --onset")
    frames.add_argument("--onset-s", type=float, help="onset time in seconds (videos): frame round(t * fps)")
    frames.add_argument("--apex-s", type=float, help="apex time in seconds (videos)")
    predict.add_argument("--batch", type=Path, help="CSV of clips: columns path, onset, apex (or onset_s, apex_s)")
    predict.add_argument("--arm", default="ma2mi", help="which final model (default: ma2mi)")
    predict.add_argument("--models", type=Path, default=Path("models/final"),
                         help="folder of the final models and their cards (default: models/final)")
    predict.add_argument("--card", type=Path, help="a model card to use instead of --models/--arm")
    predict.add_argument("--out", type=Path, default=Path("predictions"),
                         help="folder for the heat-map PNGs (default: predictions)")
    predict.add_argument("--heatmap", choices=["gradcam", "attention"], default="gradcam",
                         help="Grad-CAM on the last feature map (any model) or MIACNet's action attention")
    predict.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    return top


def _clips(args: argparse.Namespace) -> list[dict]:
    """The clips to predict: one from the arguments, or the rows of ``--batch``."""
    single = args.onset is not None or args.apex is not None
    timed = args.onset_s is not None or args.apex_s is not None
    if args.batch is not None:
        if args.path is not None or single or timed:
            raise InputError("--batch takes the clips from the CSV: give no PATH, --onset/--apex or --onset-s/--apex-s")
        return _batch_rows(args.batch)
    if args.path is None:
        raise InputError("give a PATH (video or folder of frames) with --onset/--apex, or --batch CSV")
    if single == timed or (single and None in (args.onset, args.apex)) or (timed and None in (args.onset_s,
                                                                                            args.apex_s)):
        raise InputError("give both --onset and --apex (frame numbers), or both --onset-s and --apex-s (seconds)")
    if single:
        return [{"path": args.path, "onset": args.onset, "apex": args.apex, "seconds": False}]
    return [{"path": args.path, "onset": args.onset_s, "apex": args.apex_s, "seconds": True}]


def _batch_rows(csv: Path) -> list[dict]:
    if not csv.is_file():
        raise InputError(f"{csv}: no such CSV file")
    table = pd.read_csv(csv)
    if "path" not in table or not ({"onset", "apex"} <= set(table) or {"onset_s", "apex_s"} <= set(table)):
        raise InputError(f"{csv}: needs columns path, onset, apex (frame numbers) or path, onset_s, apex_s "
                         f"(seconds); it has {', '.join(map(str, table.columns))}")
    rows = []
    for k, row in enumerate(table.to_dict("records"), start=2):  # line 1 is the header
        seconds = not ("onset" in row and not _missing(row["onset"]))
        onset, apex = (row["onset_s"], row["apex_s"]) if seconds else (row["onset"], row["apex"])
        path = Path(str(row["path"]))
        rows.append({"path": path if path.is_absolute() else csv.parent / path, "onset": onset, "apex": apex,
                     "seconds": seconds, "line": k})
    return rows


def _missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _png_name(clip: dict, index: int | None, arm: str) -> str:
    stem = clip["path"].name if clip["path"].is_dir() else clip["path"].stem
    unit = "s" if clip["seconds"] else ""
    name = f"{stem}_{clip['onset']:g}{unit}-{clip['apex']:g}{unit}_{arm}.png"
    return name if index is None else f"{index:04d}_{name}"


def _predict_one(predictor, clip: dict, args: argparse.Namespace, index: int | None) -> dict:
    from PIL import Image

    from pipeline.heatmap import overlay

    for key in ("onset", "apex"):
        if _missing(clip[key]):
            raise InputError(f"{key} is empty")
    frames = read_clip(clip["path"], clip["onset"], clip["apex"], clip["seconds"])
    prediction = predictor.predict(frames.onset, frames.apex, args.heatmap)
    args.out.mkdir(parents=True, exist_ok=True)
    png = args.out / _png_name(clip, index, predictor.card["arm"])
    Image.fromarray(overlay(prediction.aligned_onset, prediction.heatmap)).save(png)
    return {"path": str(clip["path"]), "onset_frame": frames.onset_index, "apex_frame": frames.apex_index,
            "arm": predictor.card["arm"], "label": prediction.label,
            "probabilities": {k: round(v, 6) for k, v in prediction.probabilities.items()},
            "heatmap": args.heatmap, "heatmap_png": str(png)}


def _fail(message: str) -> None:
    print(f"{PROG} predict: error: {message}", file=sys.stderr)


def predict_command(args: argparse.Namespace) -> int:
    """Run ``ma2mi predict``; returns the exit status (see the module docstring)."""
    from pipeline.predict import card_path, load_model

    try:
        clips = _clips(args)
        predictor = load_model(args.card if args.card is not None else card_path(args.models, args.arm), args.device)
    except USER_ERRORS as err:
        _fail(str(err))
        return 2
    if args.batch is None:
        try:
            print(json.dumps(_predict_one(predictor, clips[0], args, None), indent=2))
        except USER_ERRORS as err:
            _fail(str(err))
            return 2
        return 0
    results, failed = [], 0
    for index, clip in enumerate(clips):
        try:
            results.append({"line": clip["line"], **_predict_one(predictor, clip, args, index)})
        except USER_ERRORS as err:
            failed += 1
            _fail(f"{args.batch} line {clip['line']}: {err}")
            results.append({"line": clip["line"], "path": str(clip["path"]), "error": str(err)})
    print(json.dumps(results, indent=2))
    return 2 if failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ma2mi`` console script; returns (and, as a script, exits with) the status."""
    args = parser().parse_args(argv)
    if args.command == "predict":
        return predict_command(args)
    return 2  # argparse refuses unknown commands before this


if __name__ == "__main__":
    sys.exit(main())
