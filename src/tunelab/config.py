"""Typed run configuration: YAML with nested sections, checked when loaded.

    tunelab validate configs/spam-smollm2.yaml train.lr=1e-4

A config has the sections `data`, `model`, `train` and `eval` (plus `task` and `output_dir`), and
for `task: sft` an `sft` section (template, row format, loss mask, generation for evaluation).
Every field has a type, a default and help text. Loading checks everything without touching a
model: an unknown key, a wrong type or a value outside its vocabulary is an error that names the
key (with its dotted path and the file) and suggests the closest valid name. Dotted overrides on
the command line (`train.lr=1e-4`) are parsed as YAML scalars and checked against the same schema.
"""

from __future__ import annotations

import codecs
import difflib
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union, get_args

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator, model_validator

from tunelab.errors import TunelabError


def _switch_word(value):
    """YAML 1.1 reads a bare `on`/`off` as true/false (in a file and in a `key=off` override alike):
    take them back as the words the switch means."""
    return {True: "on", False: "off"}.get(value, value) if isinstance(value, bool) else value


Switch = Annotated[Literal["auto", "on", "off"], BeforeValidator(_switch_word)]  # an auto/on/off setting


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, values are checked on assignment,
    and a number is finite (`train.lr=.inf` or `nan` is refused, never trained into NaN weights)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class SplitConfig(Section):
    validation: float = Field(0.1, ge=0.0, lt=1.0, description="Share of rows held out for validation (when no validation file is given).")
    test: float = Field(0.2, ge=0.0, lt=1.0, description="Share of rows held out for the final test (when no test file is given).")
    seed: int = Field(123, description="Seed of the stratified split (and of balancing).")


class DataConfig(Section):
    train: str = Field(..., description="Training data: a CSV/TSV/JSONL/Parquet file, a folder of per-label folders, or asset:NAME.")
    validation: Optional[str] = Field(None, description="Validation file; if absent, split from `train`.")
    test: Optional[str] = Field(None, description="Test file; if absent, split from `train`.")
    format: Literal["auto", "csv", "tsv", "jsonl", "parquet", "folders"] = Field("auto", description="File format; auto = from the file extension.")
    text_column: Optional[str] = Field(None, description="Column holding the text (default: `text`, or what the dataset asset declares).")
    label_column: Optional[str] = Field(None, description="Column holding the label (default: `label`, or what the dataset asset declares).")
    header: Optional[bool] = Field(None, description="CSV/TSV: first line is a header (default true).")
    columns: Optional[list[str]] = Field(None, description="CSV/TSV without header: the column names, in order.")
    encoding: Optional[str] = Field(None, description="Text encoding of the files (default utf-8).")

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, value: Optional[str]) -> Optional[str]:
        if value is not None:
            try:
                codecs.lookup(value)
            except LookupError:
                raise ValueError(f"data.encoding = {value!r} is not an encoding Python knows (e.g. utf-8, cp949, euc-kr, latin-1)") from None
        return value
    quoting: Optional[bool] = Field(None, description="CSV/TSV: honour double quotes (false for raw text with stray quotes).")
    split: SplitConfig = Field(default_factory=SplitConfig, description="How to split `train` when no validation/test file is given.")
    balance: Literal["none", "undersample", "class_weights"] = Field("none", description="undersample: every class cut to the smallest one (before splitting, as the anchor experiments do); class_weights: weighted loss.")
    bad_rows: Literal["error", "skip"] = Field("error", description="error: stop at the first bad row naming file and line; skip: drop and count them in the report.")
    max_rows: Optional[int] = Field(None, ge=1, description="Use at most this many rows of `train`, after balancing (a stratified sample; for quick runs).")
    max_length: int = Field(256, ge=8, description="Truncate texts to this many tokens (truncated rows are counted in the report).")
    group_by_length: Union[bool, Literal["auto"]] = Field("auto", description="Batch texts of similar length together (less padding; the order stays random and seeded). auto = on for CPU training, off on a GPU, where small batches are launch-bound and grouping measured slower.")
    padding: Literal["longest", "max_length", "none"] = Field("longest", description="longest: pad each batch to its longest sequence; max_length: pad to data.max_length; none: batch size 1 with gradient accumulation.")
    packing: Switch = Field("auto", description="Pack the examples of a micro-batch into one padding-free row (positions restart and attention stays inside each example; same loss and gradients as padded batches). on = pack (on CUDA through torch's varlen FlashAttention kernel; saves memory); auto = for classification on CUDA, on for texts of 256+ tokens on average or runs of 1,000+ steps (then compiled too when every layer trains), unless the frozen-prefix cache applies; for SFT on CUDA, on where train.cuda_graphs can replay the packed micro-batches (2.9x the stock path on the H200; without graphs packed SFT rows measured within noise of padded ones); off on a CPU (tunelab.train.fastpath). Overrides padding when on.")


class LoraConfig(Section):
    r: int = Field(16, ge=1, description="LoRA rank.")
    alpha: float = Field(32.0, gt=0, description="LoRA scaling numerator (scale = alpha / r).")
    dropout: float = Field(0.05, ge=0.0, lt=1.0, description="Dropout on the LoRA input.")
    target_modules: Union[Literal["all-linear"], list[str]] = Field("all-linear", description="Module names to adapt, or all-linear (every linear layer of the backbone).")


class ModelConfig(Section):
    name: str = Field(..., description="asset:NAME, a local Hugging Face folder, a .gguf file, or a hub id (when a hub is reachable).")
    pooling: Literal["last", "first", "mean", "pooler"] = Field("last", description="Which hidden state feeds the head: last real token, first token, or mean over real tokens; encoders also pooler = first token -> dense -> tanh -> dropout -> head (BERT and ALBERT start the dense layer from their pretrained pooler), the one encoder head stock transformers' *ForSequenceClassification loads (BERT, ALBERT, RoBERTa, XLM-R, CamemBERT, MPNet). Decoders refuse pooler (use last or mean); a decoder exports to transformers with last.")
    causal_mask: bool = Field(True, description="Decoders only: false = bidirectional attention, as an encoder.")
    trainable: Literal["head", "last_blocks", "all", "lora"] = Field("last_blocks", description="What trains: the head only, the last N blocks (+ final norm + head), everything, or LoRA adapters (+ head). Default last_blocks for classification, lora for task sft (sft takes lora or all).")
    last_blocks: int = Field(2, ge=1, description="With trainable=last_blocks: how many of the last transformer blocks train.")
    lora: LoraConfig = Field(default_factory=LoraConfig, description="LoRA settings (trainable=lora).")
    head_dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout before the linear class head.")


class EarlyStopping(Section):
    metric: Literal["loss", "accuracy", "macro_f1"] = Field("loss", description="Validation metric that picks the best checkpoint and drives early stopping.")
    patience: Optional[int] = Field(None, ge=1, description="Stop after this many evaluations without improvement; null = never stop early.")


class TrainConfig(Section):
    epochs: float = Field(3, gt=0, description="Passes over the training data (fractions allowed).")
    max_steps: Optional[int] = Field(None, ge=1, description="Stop after this many optimizer steps (overrides epochs).")
    batch_size: int = Field(8, ge=1, description="Examples per optimizer step, before accumulation.")
    grad_accum: int = Field(1, ge=1, description="Micro-batches accumulated per optimizer step (effective batch = batch_size x grad_accum).")
    lr: float = Field(5e-5, gt=0, description="Peak learning rate. Unset in a classification config: chosen by model.trainable (head 1e-3, last_blocks 1e-4, all 5e-5, lora 5e-4; see docs/seven-questions.md); task sft: 5e-5.")
    weight_decay: float = Field(0.1, ge=0, description="AdamW weight decay (never applied to norms and biases).")
    warmup: float = Field(0.06, ge=0, description="Warmup length: a fraction of all steps if < 1, else a step count.")
    schedule: Literal["cosine", "linear", "constant"] = Field("cosine", description="Learning-rate decay after warmup.")
    max_grad_norm: Optional[float] = Field(1.0, gt=0, description="Gradient clipping norm; null = no clipping.")
    eval_every: Union[Literal["epoch"], int] = Field("epoch", description="Evaluate on validation every N optimizer steps, or each epoch.")
    save_every: Optional[int] = Field(None, ge=1, description="Also write a resumable checkpoint every N steps (always at each evaluation).")
    early_stopping: EarlyStopping = Field(default_factory=EarlyStopping, description="Best-checkpoint metric and patience.")
    seed: int = Field(123, description="Seed of everything random (init of the head, data order, dropout).")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field("auto", description="auto = bf16 on a GPU that supports it, fp32 on a CPU. bf16 on a CPU with native bf16 (AVX512-BF16 or AMX) autocasts and runs about 1.6x faster than fp32; it is refused on a CPU that would emulate it. fp16 needs a GPU.")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="Where to train; auto = cuda when available.")
    num_threads: Optional[int] = Field(None, ge=1, description="CPU threads for torch (default: torch's choice).")
    max_tokens_per_micro_batch: Optional[int] = Field(None, ge=1, description="Cut each optimizer step's examples into micro-batches of at most this many real tokens (the gradient does not depend on the cut: the loss is normalised by the step's targets). null = batch_size examples per micro-batch.")
    compile: Switch = Field("auto", description="torch.compile each transformer block (dynamic shapes) on a GPU, for classification and SFT. on = compile (pays with data.packing on, measured for classification); auto = on for classification runs of 1,000+ steps on CUDA that train every layer, with packed rows (the one-time compile pays back), off for SFT (tunelab.train.fastpath); a CPU never compiles.")
    cuda_graphs: Switch = Field("auto", description="Replay each micro-batch's forward and backward pass as one captured CUDA graph (one per row shape; packed rows are rounded onto a few shapes), instead of launching thousands of kernels from Python. Needs data.packing on, one process, CUDA, bf16/fp16 and no gradient checkpointing; same loss and gradients. auto = on for SFT where it can run (tunelab.train.cuda_graphs), and then data.packing auto packs SFT rows; on = also for classification (not yet measured on a GPU); off = eager. Graphs keep the largest row shape's activations in their own memory pool, next to the eager allocator's: near the GPU's memory limit, off.")
    gradient_checkpointing: bool = Field(False, description="Recompute activations in the backward pass instead of keeping them: less memory, about a third more compute.")
    cache_frozen: bool = Field(True, description="Classification with trainable head or last_blocks: compute the frozen lower blocks once per text and keep their output (in RAM, or memory-mapped under the run folder when large), so later epochs and evaluations run only the trained top; same metrics. Used where the frozen part has no active dropout and rows are not packed; the log says when and why not.")
    distributed: Literal["auto", "ddp", "fsdp"] = Field("auto", description="With several processes (torchrun, accelerate launch): ddp = a whole model per process, gradients averaged; fsdp = weights, gradients and optimizer states sharded over the processes (FSDP2), for models whose training state does not fit one GPU; auto = ddp. One process ignores it.")


class EvalConfig(Section):
    batch_size: int = Field(32, ge=1, description="Batch size for validation, test and prediction.")
    train_rows: Optional[int] = Field(None, ge=1, description="Score the final model on at most this many training rows (a seeded random sample) for the train accuracy in the summary; unset = all. The train score only diagnoses over-fitting, and on a CPU scoring a large training split can cost as much as training on it.")


TEXT_TEMPLATES = Literal["alpaca", "docqa", "docqa-ko", "docqa-en"]


class GenerationSection(Section):
    max_new_tokens: int = Field(128, ge=1, description="Most tokens generated per answer (generation also stops at end-of-sequence and the template's stop strings).")
    do_sample: bool = Field(False, description="false = greedy decoding; true = sampling with temperature and top_p.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature (do_sample only).")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling: keep the smallest set of tokens with this much probability (do_sample only).")
    seed: int = Field(123, description="Seed of sampling.")
    max_rows: Optional[int] = Field(None, ge=1, description="Generate answers for at most this many test rows (the first ones; generation is the slow part of evaluation); null = all.")


class SftConfig(Section):
    template: Literal["chat", "alpaca", "docqa", "docqa-ko", "docqa-en", "jinja"] = Field("chat", description="Prompt template: chat = the model's own chat template; alpaca; docqa-ko / docqa-en (document QA with a refusal answer); docqa = by each row's language; jinja = `prompt`/`response` below.")
    prompt: Optional[str] = Field(None, description="template jinja: the user-turn Jinja text (variables: content, the row's fields such as instruction/input/question/context, system, turn).")
    response: Optional[str] = Field(None, description="template jinja: the answer Jinja text (default '{{ content }}').")
    system: Optional[str] = Field(None, description="System prompt used when a row has none (replaces the template's default).")
    stop: Optional[list[str]] = Field(None, description="Strings that end a generated answer besides end-of-sequence (default: the template's own).")
    user_template: Optional[TEXT_TEMPLATES] = Field(None, description="template chat: lay out user turns with this text template's prompt (e.g. docqa-ko inside the chat format).")
    format: Literal["auto", "alpaca", "prompt_completion", "messages", "sharegpt", "docqa"] = Field("auto", description="Row format: alpaca (instruction/input/output), prompt_completion, messages (chat), sharegpt (conversations of from/value turns), docqa (question/context/answer); auto = from each row's keys.")
    train_on_prompt: bool = Field(False, description="Also train on prompt tokens (default: the loss covers answer tokens and end-of-sequence only).")
    split_by: Optional[str] = Field(None, description="Field whose rows stay together when splitting (e.g. context: test documents are never seen in training).")
    examples: int = Field(5, ge=0, description="Rows shown in examples.md (prompt, reference, generated).")
    generation: GenerationSection = Field(default_factory=GenerationSection, description="Decoding for test evaluation (and the defaults of `tunelab generate` and `tunelab chat`).")

    @model_validator(mode="after")
    def _check_template_fields(self) -> SftConfig:
        if self.template == "jinja" and not self.prompt:
            raise ValueError("sft.template is jinja: set sft.prompt (a Jinja string)")
        if self.template != "jinja" and (self.prompt is not None or self.response is not None):
            raise ValueError(f"sft.prompt / sft.response are only used with sft.template: jinja (it is {self.template})")
        if self.user_template is not None and self.template != "chat":
            raise ValueError(f"sft.user_template is only used with sft.template: chat (it is {self.template})")
        return self


# Peak learning rate per trainable policy when a classification config gives none: the rates of
# the seven-questions sweep (docs/seven-questions.md, Q1 and Q6 rows).
CLASSIFICATION_LR = {"head": 1e-3, "last_blocks": 1e-4, "all": 5e-5, "lora": 5e-4}
# Fields that only classification reads; a task sft config may not set them to other values.
CLASSIFICATION_ONLY = {"model": ("pooling", "causal_mask", "head_dropout"), "data": ("text_column", "label_column", "balance"), "train": ("cache_frozen",)}


class RunConfig(Section):
    task: Literal["classification", "sft"] = Field("classification", description="What the run trains: classification (a class head) or sft (instruction fine-tuning of a causal LM).")
    output_dir: str = Field("runs/run", description="Run folder (created; an existing finished run is never overwritten without --force).")
    data: DataConfig
    model: ModelConfig
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    sft: Optional[SftConfig] = Field(None, description="task sft: template, row format, loss mask and generation settings (defaults filled in for task sft).")

    @model_validator(mode="before")
    @classmethod
    def _task_defaults(cls, data: Any) -> Any:
        """Defaults that depend on other fields; the resolved values are written to the run's
        config.yaml. task sft: an `sft` section with its defaults, and model.trainable lora unless
        given. task classification: train.lr by model.trainable unless given, because one rate
        does not suit every policy (a fresh head alone needs ~20x the rate of all layers)."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        model = data.get("model") if isinstance(data.get("model"), dict) else None
        if data.get("task") == "sft":
            if data.get("sft") is None:
                data["sft"] = {}
            if model is not None and "trainable" not in model:
                data["model"] = {**model, "trainable": "lora"}
        elif data.get("task", "classification") == "classification" and model is not None:
            train = {} if data.get("train") is None else data["train"]
            trainable = model.get("trainable", ModelConfig.model_fields["trainable"].default)
            if isinstance(train, dict) and "lr" not in train and trainable in CLASSIFICATION_LR:
                data["train"] = {**train, "lr": CLASSIFICATION_LR[trainable]}
        return data

    @model_validator(mode="after")
    def _check_split(self) -> RunConfig:
        if self.data.split.validation + self.data.split.test >= 0.9:
            raise ValueError("data.split.validation + data.split.test must leave at least 10 % for training")
        return self

    @model_validator(mode="after")
    def _check_task(self) -> RunConfig:
        if self.task == "classification":
            if self.sft is not None:
                raise ValueError("the sft section is only used with task: sft (this config has task: classification)")
            return self
        for section, names in CLASSIFICATION_ONLY.items():
            part = getattr(self, section)
            for name in names:
                if getattr(part, name) != type(part).model_fields[name].default:
                    raise ValueError(f"{section}.{name} is a classification setting; task sft does not use it (remove it)")
        if self.model.trainable not in ("lora", "all"):
            raise ValueError(f"model.trainable = {self.model.trainable!r}: task sft trains lora (default) or all")
        if self.train.early_stopping.metric != "loss":
            raise ValueError(f"train.early_stopping.metric = {self.train.early_stopping.metric!r}: task sft picks the best checkpoint by validation loss")
        return self


# ---------------------------------------------------------------------------------------------
# Loading, overrides and error messages


def _model_in(annotation) -> type[BaseModel] | None:
    """The section class inside an annotation: X, Optional[X], list[X] or dict[str, X]."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return next((m for m in map(_model_in, get_args(annotation)) if m is not None), None)


def section_fields(model_cls: type[BaseModel], path) -> list[str]:
    """The keys valid at `path` inside `model_cls`; list indexes and dict keys on the way are
    stepped over (they stay on the item's section)."""
    cls: Any = model_cls
    for key in path:
        if cls is not None and key in cls.model_fields:
            cls = _model_in(cls.model_fields[key].annotation)
    return list(cls.model_fields) if cls is not None else []


def explain_errors(err: ValidationError, model_cls: type[BaseModel], what: str = "", where=None) -> list[str]:
    """The one explainer of pydantic errors, for run configs, sweep files and synth configs: one
    line per error naming the dotted key, with the closest valid key or value when one is near.
    `what` qualifies unknown keys ("sweep "); `where(loc)` gives a "file:line: " prefix."""
    out = []
    for e in err.errors():
        loc = [str(p) for p in e["loc"] if not str(p).startswith(("list[", "dict["))]  # drop Union branch names
        key = ".".join(loc) or "(top level)"
        prefix = where(tuple(loc)) if where else ""
        if e["type"] == "extra_forbidden":
            valid = section_fields(model_cls, loc[:-1])
            close = difflib.get_close_matches(loc[-1], valid, n=1, cutoff=0.5)
            hint = f"; did you mean '{'.'.join(loc[:-1] + close)}'?" if close else f"; valid keys here: {', '.join(valid)}"
            out.append(f"{prefix}unknown {what}key '{key}'{hint}")
        elif e["type"] == "literal_error":
            expected = e.get("ctx", {}).get("expected", "")
            options = [o.strip().strip("'") for o in expected.replace(" or ", ",").split(",") if o.strip()]
            close = difflib.get_close_matches(str(e.get("input")), options, n=1, cutoff=0.4)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            out.append(f"{prefix}'{key}' = {e.get('input')!r} is not one of {expected}{hint}")
        elif e["type"] == "missing":
            out.append(f"{prefix}'{key}' is required")
        elif e["type"] == "value_error" and "error" in e.get("ctx", {}):  # our checks name the keys
            out.append(f"{prefix}{e['ctx']['error']}")
        else:
            out.append(f"{prefix}'{key}' = {e.get('input')!r}: {e['msg']}" if loc else f"{prefix}{e['msg']}")
    return list(dict.fromkeys(out))


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split `train.lr=1e-4` into (['train', 'lr'], 0.0001); the value is read as a YAML scalar.

    >>> parse_override("model.lora.r=8")
    (['model', 'lora', 'r'], 8)
    """
    if "=" not in text:
        raise TunelabError(f"override '{text}' must look like section.key=value (e.g. train.lr=1e-4)")
    key, raw = text.split("=", 1)
    value = yaml.safe_load(raw) if raw.strip() else None
    # YAML 1.1 reads '1e-4' as a string; accept it as the number the user meant.
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    return key.strip().split("."), value


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Return a copy of the raw config dict with dotted overrides applied (checked at validation)."""
    import copy

    out = copy.deepcopy(raw)
    for text in overrides:
        path, value = parse_override(text)
        node = out
        for key in path[:-1]:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise TunelabError(f"override '{text}': '{key}' is not a section")
        node[path[-1]] = value
    return out


def read_yaml(path: str | Path) -> dict:
    """Read a YAML mapping, with errors naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise TunelabError(f"config file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise TunelabError(f"{where}: not valid YAML ({getattr(err, 'problem', err)})") from None
    except UnicodeDecodeError:
        raise TunelabError(f"{path}: not UTF-8 text") from None
    if not isinstance(raw, dict):
        raise TunelabError(f"{path}: expected a mapping of sections (data, model, train, eval) at the top")
    return raw


def validate_dict(raw: dict, source: str = "") -> RunConfig:
    """Check a raw dict against the schema; raise TunelabError with readable lines."""
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as err:
        raise TunelabError(f"invalid config {source}:\n  " + "\n  ".join(explain_errors(err, RunConfig))) from None


def load_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """Load a YAML config file, apply dotted overrides, validate. Relative data paths stay relative
    to the working directory (the way users type them)."""
    raw = apply_overrides(read_yaml(path), overrides or [])
    return validate_dict(raw, source=f"in {path}")


def to_yaml(config: BaseModel) -> str:
    """The resolved config as YAML (every default filled in), for printing and for the run folder."""
    data = config.model_dump(mode="json")
    if "sft" in data and data["sft"] is None:
        del data["sft"]  # classification configs stay as they were
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
