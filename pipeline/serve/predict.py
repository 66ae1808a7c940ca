"""Apply a final model to a new clip, with the training preprocessing, and say where it looked (DESIGN §10).

:func:`load_model` reads a model card (``models/final/<arm>.json``, :mod:`pipeline.train.final`) and the weights beside
it; :meth:`Predictor.predict` takes a clip's onset and apex frames and does what training did to them:

1. ONE crop / alignment transform from the onset frame, with the card's detector (``none``, ``haar``, ``mtcnn``),
   ``box_scale``, ``align_margin`` and crop size, applied to both frames
   (:func:`pipeline.face.align.align_clip`, the function ``ingest_micro`` uses);
2. with ``optical_flow: tvl1``, the onset → apex TV-L1 flow at the crop size, stored as float16 as
   ``ingest_micro`` stores it (:func:`pipeline.face.optical_flow.flow_features`);
3. the crops (and flow) turned into the model's batch by :class:`pipeline.data.micro.MicroTensors`, the class that
   fed training: resized to the model's input side, ImageNet-normalised, flow resized to the model's grid;
4. softmax probabilities, and a heat map on the aligned onset crop (:mod:`pipeline.models.heatmap`): Grad-CAM of the
   predicted class on ``forward_features`` (every model), or MIACNet's action-branch attention.

A model gives probabilities for any input, a face or not. With the ``haar`` and ``mtcnn`` detectors an onset
frame without a face is refused (:class:`NoFaceError`); with ``none`` (faces cropped beforehand) nothing looked
for one, so predict runs OpenCV's Haar face cascade on the onset frame anyway and, when it finds no face, says so
in :attr:`Prediction.warnings` (``ma2mi predict`` prints it to stderr and in its JSON): the probabilities are then
those of an input unlike the training faces, however confident they look. It is a warning, not an error: the
cascade also misses some real faces (tight crops, turned heads).

:func:`load_model` trusts neither file: the card is checked for every key predict reads, the weights are loaded
with ``torch.load(weights_only=True)`` (tensors and plain containers only, so a crafted file cannot run code while
it is read), and their own ``classes`` and ``model_name`` must be the card's: a card with its classes reordered
would otherwise relabel every prediction.

Usage (after ``dvc repro``; frames are ``(H, W, 3) uint8 RGB``, e.g. from :func:`pipeline.serve.clips.read_clip`)::

    predictor = load_model("models/final/ma2mi.json")
    prediction = predictor.predict(onset_frame, apex_frame)
    prediction.label, prediction.probabilities  # 'positive', {'negative': 0.08, 'positive': 0.87, ...}
"""

from __future__ import annotations

import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import pydantic
import torch

from pipeline.cards import PREPROCESSING_KEYS, NotAModelCardError, read_card
from pipeline.config import MicroParams, ModelParams
from pipeline.data.micro import MicroTensors
from pipeline.face.align import DETECTORS, align_clip, make_detector
from pipeline.face.optical_flow import flow_features
from pipeline.io import encode_array, encode_png
from pipeline.models.checkpoint import check_state_fits
from pipeline.models.heatmap import HEATMAP_METHODS, model_heatmaps
from pipeline.models.registry import MODELS, create_model, model_inputs
from pipeline.serve.clips import InputError

__all__ = ["NoFaceError", "NotAModelCardError", "Prediction", "Predictor", "card_path", "load_model"]


NO_FACE_WARNING = ("no face found on the onset frame by OpenCV's Haar cascade (this model's detector is none, which "
                   "looks for none): if the input is not a face like the training ones, the prediction means nothing")


class NoFaceError(InputError):
    """The detector found no face on the clip's onset frame."""


class _Strict(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="allow", strict=True)


class _Preprocessing(_Strict):
    detector: Literal[tuple(DETECTORS)]
    box_scale: float = pydantic.Field(gt=0)
    align_margin: float = pydantic.Field(ge=0)
    image_size_px: int = pydantic.Field(ge=8)
    optical_flow: Literal["tvl1", "none"]


class _Input(_Strict):
    model_size_px: int = pydantic.Field(ge=8)


class _Model(_Strict):
    name: Literal[tuple(MODELS)]
    params: dict


class _Card(_Strict):
    """The keys of a model card that predict reads (the card has more; :func:`pipeline.train.final.model_card`)."""

    arm: str
    weights: str = pydantic.Field(pattern=r"^[^/\\]+$")  # a file beside the card
    classes: list[str] = pydantic.Field(min_length=1)
    preprocessing: _Preprocessing
    input: _Input
    model: _Model


@dataclass(frozen=True)
class Prediction:
    """What a final model says about one clip.

    Attributes:
        probabilities: class name -> softmax probability, in the card's class order.
        label: the most probable class.
        heatmap: ``(S, S) float32`` in [0, 1] on the aligned onset crop (S: the card's crop size).
        aligned_onset: ``(S, S, 3) uint8 RGB``, the onset frame as the model saw it (before resizing).
        crop_matrix: ``(2, 3)`` float64, frame px -> crop px (the clip's one transform).
        warnings: why the prediction may mean nothing, e.g. :data:`NO_FACE_WARNING` (see the module docstring);
            empty when there is no such reason.
    """

    probabilities: dict[str, float]
    label: str
    heatmap: np.ndarray
    aligned_onset: np.ndarray
    crop_matrix: np.ndarray
    warnings: tuple[str, ...] = field(default=())


def card_path(models_dir: Path, arm: str) -> Path:
    """The card of ``arm``'s final model in ``models_dir``.

    Raises:
        InputError: there is none (the message lists the arms that have one).
    """
    path = models_dir / f"{arm}.json"
    if not path.is_file():
        found = sorted(p.stem for p in models_dir.glob("*.json")) if models_dir.is_dir() else []
        raise InputError(f"no final model for arm {arm!r} in {models_dir} (found: {', '.join(found) or 'none'}); "
                         f"run `dvc repro final_{arm}`")
    return path


class Predictor:
    """A final model with its card's preprocessing; see the module docstring.

    Args:
        card: the model card (:func:`pipeline.train.final.model_card`).
        model: the model, weights loaded, in eval mode.
        device: where it runs.

    Attributes:
        classes: class names in label order.
        crop_size_px: S, the aligned crop's side.
    """

    def __init__(self, card: dict, model: torch.nn.Module, device: torch.device) -> None:
        self.card, self.model, self.device = card, model.eval(), device
        self.classes: list[str] = list(card["classes"])
        preprocessing = card["preprocessing"]
        # align_clip reads image_size_px, box_scale and align_margin: the card's values (load_model checks their types)
        self.micro = MicroParams.model_construct(**{k: preprocessing[k] for k in PREPROCESSING_KEYS})
        self.crop_size_px = int(preprocessing["image_size_px"])
        self.model_size_px = int(card["input"]["model_size_px"])
        self.detector = make_detector(preprocessing["detector"], "preprocessing.detector")
        # detector none looks for no face: the Haar cascade checks that there is one (a warning only)
        self.face_check = make_detector("haar") if self.detector is None else None

    def aligned(self, onset_frame: np.ndarray, apex_frame: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(onset crop, apex crop, matrix)``: the clip's one transform from its onset frame, as in training.

        Raises:
            NoFaceError: no face on the onset frame.
            InputError: frames that are not ``(H, W, 3) uint8`` of the same size.
        """
        for name, frame in (("onset", onset_frame), ("apex", apex_frame)):
            if not isinstance(frame, np.ndarray) or frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
                raise InputError(f"the {name} frame must be an (H, W, 3) uint8 RGB array, got "
                                 f"{getattr(frame, 'shape', type(frame).__name__)} {getattr(frame, 'dtype', '')}")
        try:
            return align_clip(onset_frame, apex_frame, self.micro, self.detector)
        except ValueError as err:
            if "no face" in str(err):
                raise NoFaceError(f"{err}: the {self.card['preprocessing']['detector']} detector of this model "
                                  "found no face; is the face visible and frontal?") from err
            raise InputError(str(err)) from err

    def batch(self, onset_crop: np.ndarray, apex_crop: np.ndarray) -> dict[str, torch.Tensor]:
        """The model's batch of one clip, built by the class that fed training (:class:`MicroTensors`)."""
        row = {"onset_image": [encode_png(onset_crop)], "apex_image": [encode_png(apex_crop)], "label": [0]}
        if self.card["preprocessing"]["optical_flow"] == "tvl1":  # as ingest_micro stores it: float16
            row["flow"] = [encode_array(flow_features(onset_crop, apex_crop, self.crop_size_px).astype(np.float16))]
        data = MicroTensors(pd.DataFrame(row), self.model_size_px)
        batch = next(data.batches(np.arange(1), 1, None, flow_size_px=getattr(self.model, "flow_size_px", None)))
        return {key: value.to(self.device) for key, value in batch.items()}

    def predict(self, onset_frame: np.ndarray, apex_frame: np.ndarray, method: str = "gradcam") -> Prediction:
        """Classify a clip from its onset and apex frames and map where the model looked.

        Args:
            onset_frame: ``(H, W, 3) uint8 RGB``, the clip's whole onset frame.
            apex_frame: its apex frame, the same size.
            method: ``gradcam`` (every model) or ``attention`` (MIACNet's action attention).

        Returns:
            The :class:`Prediction`.

        Raises:
            NoFaceError: no face on the onset frame.
            InputError: bad frames, or ``attention`` for a model without it.
        """
        if method not in HEATMAP_METHODS:
            raise InputError(f"heat-map method {method!r}: known {', '.join(HEATMAP_METHODS)}")
        onset_crop, apex_crop, matrix = self.aligned(onset_frame, apex_frame)
        warnings = ()
        if self.face_check is not None and self.face_check.detect(onset_frame) is None:
            warnings = (NO_FACE_WARNING,)
        inputs = model_inputs(self.model, self.batch(onset_crop, apex_crop))
        try:
            heatmaps, probabilities = model_heatmaps(self.model, inputs, self.crop_size_px, method)
        except ValueError as err:
            raise InputError(str(err)) from err
        probs = {name: float(p) for name, p in zip(self.classes, probabilities[0], strict=True)}
        return Prediction(probs, self.classes[int(np.argmax(probabilities[0]))], heatmaps[0], onset_crop, matrix,
                          warnings)


def load_model(card: str | Path, device: str | torch.device = "cpu") -> Predictor:
    """A :class:`Predictor` from a model card and the weights its ``weights`` entry names (beside the card).

    Neither file is trusted (see the module docstring): the weights are read with ``weights_only=True``.

    Raises:
        NotAModelCardError: the file is not a model card, lacks a key predict reads or has a bad value there
            (the message names the key), names an unknown model; or its weights are missing, unreadable,
            refused (objects other than tensors and plain containers), for other classes or another model than
            the card's, or do not fit its model. The message names the file(s).
    """
    path = Path(card)
    raw = read_card(path)
    try:
        checked = _Card.model_validate(raw)
    except pydantic.ValidationError as err:
        raise NotAModelCardError(f"{path}: not a usable model card: {_problems(err)}") from err
    weights = path.parent / checked.weights
    if not weights.is_file():
        raise NotAModelCardError(f"{path}: its weights {weights} are missing (dvc pull or dvc repro final_"
                                 f"{checked.arm})")
    state = _read_weights(weights)
    for key, own in (("classes", checked.classes), ("model_name", checked.model.name)):
        if state.get(key) != own:
            raise NotAModelCardError(f"{weights} holds {key} {state.get(key)!r} but its card {path} says {own!r}: "
                                     "they do not belong together (regenerate the card with dvc repro final_"
                                     f"{checked.arm})")
    try:
        params = ModelParams.model_validate(checked.model.params)
    except pydantic.ValidationError as err:
        raise NotAModelCardError(f"{path}: not a usable model card: {_problems(err, 'model.params.')}") from err
    try:
        model = create_model(checked.model.name, len(checked.classes), params)
        check_state_fits(model.state_dict(), state["model"], str(weights))
        model.load_state_dict(state["model"])
        device = torch.device(device)
        return Predictor(raw, model.to(device), device)
    except ValueError as err:  # the model refuses its params (e.g. MMNet not at 224 px), or the weights do not fit
        raise NotAModelCardError(f"{path} (weights {weights}): {_one_line(err)}") from err


def _problems(err: pydantic.ValidationError, prefix: str = "") -> str:
    """Every problem of ``err`` on one line, each with its key path (``preprocessing.detector: Field required``)."""
    def got(error: dict) -> str:
        scalar = isinstance(error.get("input"), str | int | float | bool) and error["type"] != "missing"
        return f" (got {error['input']!r})" if scalar else ""

    return "; ".join(f"{prefix}{'.'.join(map(str, e['loc']))}: {e['msg']}{got(e)}" for e in err.errors())


def _read_weights(weights: Path) -> dict:
    """``torch.load(weights, weights_only=True)``: a dict with a ``model`` state dict, or NotAModelCardError."""
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        refused = re.search(r"Unsupported global: (?:GLOBAL )?(\S+)", str(err))
        if refused:  # torch's message suggests weights_only=False: not for a file from elsewhere
            raise NotAModelCardError(
                f"{weights}: refused: it holds the Python object {refused.group(1).rstrip('.')}, not only tensors "
                "and plain containers, and could run code while it is read (torch.load weights_only=True); use "
                "only weights that a final_<arm> stage wrote") from err
        detail = re.search(r"WeightsUnpickler error:\s*(\S.*)", str(err))
        raise NotAModelCardError(f"{weights}: not a readable checkpoint (damaged, or not written by torch.save: "
                                 f"{detail.group(1) if detail else _one_line(err)})") from err
    except Exception as err:  # untrusted bytes: torch raises RuntimeError, EOFError, ValueError, ...
        raise NotAModelCardError(f"{weights}: not a readable checkpoint ({type(err).__name__}: "
                                 f"{_one_line(err)})") from err
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
        raise NotAModelCardError(f"{weights}: not a final model's checkpoint (a dict with a 'model' state dict; "
                                 f"it holds a {type(state).__name__})")
    if not all(isinstance(v, torch.Tensor) for v in state["model"].values()):
        raise NotAModelCardError(f"{weights}: its 'model' state dict holds values other than tensors")
    return state


def _one_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__
