"""``ma2mi``: the project's command line (``[project.scripts]`` in pyproject.toml).

``ma2mi predict PATH --onset N --apex N`` applies a final model (``models/final/<arm>.json`` + ``.pt``, written by
the ``final_<arm>`` stages) to one clip, with the training preprocessing (:mod:`pipeline.serve.predict`), prints JSON
(class probabilities and the predicted class) and writes a heat-map overlay PNG on the aligned onset face.
``ma2mi predict --batch clips.csv`` does it for many clips (columns ``path, onset, apex`` or
``path, onset_s, apex_s``; relative paths are relative to the CSV) and prints a JSON list.

PATH is a video file or a folder of frames; frame numbers follow :mod:`pipeline.serve.clips` (folders: the number at
the end of the file name, e.g. ``reg_img46.jpg`` is 46; videos: 0-based; ``--onset-s``/``--apex-s``: seconds,
videos only).

Heat maps: ``<out>/<clip>_<onset>-<apex>_<arm>.png`` (a batch prefixes the row's index), each written atomically
(a temporary file renamed into place: a failed write leaves no partial PNG); an existing PNG is refused unless
``--overwrite`` is given.

Warnings: a prediction that may mean nothing (see :mod:`pipeline.serve.predict`: with a model whose detector is
``none``, an onset frame on which OpenCV's Haar cascade finds no face) is still printed, with its reasons in the
JSON's ``"warnings"`` list (empty otherwise) and one line ``ma2mi predict: warning: <path>: ...`` each on stderr.

Exit status: 0; 2 with one line ``ma2mi predict: error: ...`` on stderr for a problem with the input (no face on
the onset frame, a frame out of range, a file that is not a model card or lacks a key, weights that are corrupt,
refused (not only tensors: ``torch.load(weights_only=True)``) or for other classes than the card's, an unknown
model, an arm without a final model, a bad argument or ``--batch`` cell, an existing PNG without ``--overwrite``,
a heat map that cannot be written); in a batch, every clip is tried, the JSON list has every row (good rows their
result, failed ones ``"error"``, each also on stderr naming the CSV line), and the status is 2 if one failed
(1 if one failed by an internal error, a bug: its type is in the message).

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

import numpy as np
import pandas as pd

from pipeline.cards import NotAModelCardError
from pipeline.io import atomic_path
from pipeline.serve.clips import InputError, read_clip

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
    predict.add_argument("--overwrite", action="store_true",
                         help="replace heat-map PNGs that already exist in --out (default: refuse them)")
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
    """Every row of the ``--batch`` CSV as a clip; a row with a bad cell carries its ``"error"`` instead.

    Raises:
        InputError: the CSV is missing, unreadable or lacks the columns (the message names it).
    """
    if not csv.is_file():
        raise InputError(f"{csv}: no such CSV file")
    try:
        table = pd.read_csv(csv, dtype=str, keep_default_na=False)  # every cell as written, checked below
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as err:
        raise InputError(f"{csv}: not a readable CSV ({str(err).strip().splitlines()[0]})") from err
    if "path" not in table or not ({"onset", "apex"} <= set(table) or {"onset_s", "apex_s"} <= set(table)):
        raise InputError(f"{csv}: needs columns path, onset, apex (frame numbers) or path, onset_s, apex_s "
                         f"(seconds); it has {', '.join(map(str, table.columns))}")
    rows = []
    for k, row in enumerate(table.to_dict("records"), start=2):  # line 1 is the header
        seconds = "onset" not in table or ("onset_s" in table and not row["onset"].strip())
        clip = {"path": Path(row["path"].strip()), "onset": None, "apex": None, "seconds": seconds, "line": k}
        try:
            if not row["path"].strip():
                raise InputError("column path is empty")
            for key in ("onset", "apex"):
                column = f"{key}_s" if seconds else key
                clip[key] = _cell(row.get(column, ""), column, seconds)
        except InputError as err:
            clip["error"] = str(err)
        if not clip["path"].is_absolute():
            clip["path"] = csv.parent / clip["path"]
        rows.append(clip)
    return rows


def _cell(text: str, column: str, seconds: bool) -> float | int:
    """A frame number (an integer) or, with ``seconds``, a time in s (finite, >= 0), from a CSV cell."""
    text = text.strip()
    if not text:
        raise InputError(f"column {column} is empty")
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if seconds and math.isfinite(value) and value >= 0:
        return value
    if not seconds and math.isfinite(value) and value == int(value):
        return int(value)
    raise InputError(f"column {column}: {text!r} is not " + ("a time in seconds" if seconds else "a frame number"))


def _png_name(clip: dict, index: int | None, arm: str) -> str:
    stem = clip["path"].name if clip["path"].is_dir() else clip["path"].stem
    unit = "s" if clip["seconds"] else ""
    name = f"{stem}_{clip['onset']:g}{unit}-{clip['apex']:g}{unit}_{arm}.png"
    return name if index is None else f"{index:04d}_{name}"


def _check_out(out: Path) -> None:
    """Refuse an ``--out`` that exists and is not a folder (before any work)."""
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out}: exists and is not a folder (--out is the folder of the heat-map PNGs)")


def _write_png(image: np.ndarray, png: Path, overwrite: bool) -> None:
    """Write ``image`` to ``png`` atomically; an existing ``png`` only with ``overwrite``; OSError -> InputError."""
    from PIL import Image

    if png.exists() and not overwrite:
        raise InputError(f"{png}: exists; pass --overwrite to replace it, or choose another --out")
    try:
        with atomic_path(png) as tmp:
            Image.fromarray(image).save(tmp, format="PNG")
    except OSError as err:
        raise InputError(f"{png}: cannot write the heat map ({err})") from err


def _predict_one(predictor, clip: dict, args: argparse.Namespace, index: int | None) -> dict:
    from pipeline.models.heatmap import overlay

    if "error" in clip:
        raise InputError(clip["error"])
    frames = read_clip(clip["path"], clip["onset"], clip["apex"], clip["seconds"])
    prediction = predictor.predict(frames.onset, frames.apex, args.heatmap)
    png = args.out / _png_name(clip, index, predictor.card["arm"])
    _write_png(overlay(prediction.aligned_onset, prediction.heatmap), png, args.overwrite)
    for warning in prediction.warnings:
        print(f"{PROG} predict: warning: {clip['path']}: {warning}", file=sys.stderr)
    return {"path": str(clip["path"]), "onset_frame": frames.onset_index, "apex_frame": frames.apex_index,
            "arm": predictor.card["arm"], "label": prediction.label,
            "probabilities": {k: round(v, 6) for k, v in prediction.probabilities.items()},
            "heatmap": args.heatmap, "heatmap_png": str(png), "warnings": list(prediction.warnings)}


def _fail(message: str) -> None:
    print(f"{PROG} predict: error: {' '.join(message.split())}", file=sys.stderr)  # one line


def predict_command(args: argparse.Namespace) -> int:
    """Run ``ma2mi predict``; returns the exit status (see the module docstring)."""
    from pipeline.serve.predict import card_path, load_model

    try:
        _check_out(args.out)
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
    results, failed, internal = [], 0, 0
    for index, clip in enumerate(clips):
        try:
            results.append({"line": clip["line"], **_predict_one(predictor, clip, args, index)})
            continue
        except USER_ERRORS as err:
            message = str(err)
        except Exception as err:  # a bug: the other rows are still tried and printed, the status says it
            message, internal = f"internal error {type(err).__name__}: {err}", internal + 1
        failed += 1
        _fail(f"{args.batch} line {clip['line']}: {message}")
        results.append({"line": clip["line"], "path": str(clip["path"]), "error": message})
    print(json.dumps(results, indent=2))
    return 1 if internal else 2 if failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ma2mi`` console script; returns (and, as a script, exits with) the status."""
    args = parser().parse_args(argv)
    if args.command == "predict":
        return predict_command(args)
    return 2  # argparse refuses unknown commands before this


if __name__ == "__main__":
    sys.exit(main())
