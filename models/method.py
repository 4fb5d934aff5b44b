"""The contract every index method (TDM, JTM, DeFoRec, RecForest, Deep Retrieval) fulfils.

A method is a stateless object with four verbs over a `Built` index (structure + artifacts):

    construct(config, data, seed)          -> Built   initial index (and any pretraining)
    train(config, built, data, seed)       -> Built   same structure, new weights
    relearn(config, built, data, seed)     -> Built   new structure from the trained model
    searcher(config, built, device)        -> Searcher, answers batched top-k queries

Flows call these verbs and write each result as a new store version; they never see tensors.
Artifacts are the bytes of what the method needs besides the structure (``torch.save`` of
state dicts, usually ``{"weights.pt": ...}``); the store keeps them as hashed blobs.

Every method has one frozen dataclass config (`MethodConfig` subclass); the version stores
``dataclasses.asdict(config)`` as JSON and a model is rebuilt with ``config_from_dict``.
Build-time knobs live in the config; query-time knobs (k, beam) are arguments of ``search``.
"""

from __future__ import annotations

import dataclasses
import io
import types
import typing
from abc import ABC, abstractmethod
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, TypeVar

import torch

from grove.indexstore.errors import GroveError, StateError
from grove.indexstore.samples import SplitData
from grove.indexstore.structures import Structure
from grove.models.limits import check_arity
from grove.models.precision import autocast, precision_dtype


@dataclass(frozen=True)
class MethodConfig:
    """Base of the per-method frozen configs. Subclasses add typed fields with defaults."""

    seed: int = 0

    # A field added after versions were stored with this config: the value that reproduces what
    # those versions were built with, used for a stored config that lacks the field (a new
    # field's default may be a different choice, e.g. JTM's network since issue 30).
    stored_before: ClassVar[dict[str, Any]] = {}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def config_from_dict(cls: type[MethodConfig], values: dict[str, Any] | None, stored: bool = False) -> MethodConfig:
    """Build ``cls`` from a dict, refusing unknown fields with a message that lists known ones.

    ``stored``: the dict is a stored version's config; fields it lacks take
    ``cls.stored_before`` (what the version was built with) before the defaults."""
    values = {**cls.stored_before, **(values or {})} if stored else dict(values or {})
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise GroveError(
            f"unknown config field {unknown[0]!r} for {cls.__name__}; known fields: {', '.join(sorted(known))}"
        )
    hints = typing.get_type_hints(cls)
    for name, val in list(values.items()):
        values[name] = _typed(cls.__name__, name, hints.get(name), val)
    try:
        config = cls(**values)
    except (TypeError, ValueError) as exc:
        raise GroveError(f"invalid {cls.__name__}: {exc}") from exc
    if hasattr(config, "device"):
        check_device(config.device)
    return config


def _typed(owner: str, name: str, hint: Any, val: Any) -> Any:
    """``val`` checked against a config field's type (int, float, bool, str, tuple of ints,
    optional int), as JSON gives it; a GroveError naming the field and value otherwise."""
    options = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    if val is None and type(None) in options:
        return None
    for option in options:
        if option is bool and isinstance(val, bool):
            return val
        if option is int and isinstance(val, int) and not isinstance(val, bool):
            return val
        if option is float and isinstance(val, (int, float)) and not isinstance(val, bool):
            return float(val)
        if option is str and isinstance(val, str):
            return val
        if (
            typing.get_origin(option) is tuple
            and isinstance(val, (list, tuple))
            and all(isinstance(v, int) and not isinstance(v, bool) for v in val)
        ):
            return tuple(val)  # JSON turns tuples into lists
    if not any(o in (bool, int, float, str) or typing.get_origin(o) is tuple for o in options):
        return val  # a type this check does not know: the config's own validation decides
    wanted = " or ".join(_type_name(o) for o in options)
    raise GroveError(f"{owner}.{name} must be {wanted}, got {val!r}")


def _type_name(hint: Any) -> str:
    if hint is type(None):
        return "null"
    if typing.get_origin(hint) is tuple:
        return "a list of integers"
    return {bool: "true/false", int: "an integer", float: "a number", str: "a string"}.get(hint, str(hint))


def check_device(device: str) -> None:
    """'auto', 'cpu', 'cuda' or 'cuda:N' (any device string torch parses); GroveError otherwise."""
    if str(device) == "auto":
        return
    try:
        torch.device(device)
    except (RuntimeError, TypeError):
        raise GroveError(f"unknown device {device!r}: use auto, cpu, cuda or cuda:N") from None


@dataclass(frozen=True, eq=False)
class Built:
    """An index as a method produced it: the structure and named artifact bytes."""

    structure: Structure
    artifacts: dict[str, bytes] = dataclasses.field(default_factory=dict)


class Searcher(ABC):
    """A loaded, trained index on a device.

    ``histories`` are (B, 69) int64 tensors, nearest first, padded with -1
    (see `grove.indexstore.samples`). Results are fixed-shape: ``scores`` (B, k) float32 and
    ``items`` (B, k) int64, best first, padded with -inf / -1 where fewer than k were found.
    """

    n_items: int
    device: torch.device
    # the compute precision of searches (`grove.models.precision`); set with `set_precision`
    precision: str = "fp32"

    def set_precision(self, precision: str) -> None:
        """Compute later searches in ``precision`` ('fp32', 'bf16' or 'fp16'); results stay
        float32. GroveError for an unknown name. See `grove.models.precision`: by default a
        search runs under autocast (`precision_context`); a searcher that casts its weights
        instead overrides both methods."""
        precision_dtype(precision)
        self.precision = precision

    def precision_context(self) -> AbstractContextManager[Any]:
        """The context a search runs in for this searcher's precision (`search_mode`)."""
        return autocast(self.device, self.precision)

    def compile(self, whole_search: bool = False) -> None:
        """Compile the search with `torch.compile` (TDM and JTM trees: `TreeSearcher.compile`;
        RecForest: `RecForestSearcher.compile`)."""
        raise GroveError(f"{type(self).__name__} has no compiled search (TDM, JTM and RecForest have)")

    @abstractmethod
    def search(self, histories: torch.Tensor, k: int, beam: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Beam search over the index."""

    @abstractmethod
    def exhaustive(self, histories: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The same model scoring every item (brute-force reference for fidelity)."""

    def last_candidates(self) -> float | None:
        """Mean number of candidate items per user in the last search (forests, DR); or None."""
        return None


VERBS = ("construct", "train", "relearn", "search")
C = TypeVar("C", bound=MethodConfig)


class Method(ABC, Generic[C]):
    """The verbs of a method over its config type ``C`` (a `MethodConfig` subclass)."""

    name: ClassVar[str]
    kind: ClassVar[str]  # 'tree' | 'forest' | 'codes'
    config_cls: ClassVar[type[MethodConfig]]
    relearns: ClassVar[bool] = True  # whether `relearn` changes the structure
    # the config fields that set the memory a verb needs (named when a size is refused)
    size_fields: ClassVar[tuple[str, ...]] = ()

    def check_sizes(self, config: C, n_items: int) -> None:
        """Refuse (GroveError) sizes that make no sense for ``n_items`` items (`grove.models.limits`)."""
        arity = getattr(config, "arity", None)
        if self.kind in ("tree", "forest") and isinstance(arity, int):
            check_arity(arity, n_items)

    def memory_bytes(self, config: C, n_items: int, verb: str) -> int:
        """Estimated peak bytes of ``verb`` (one of VERBS) on ``n_items`` items, from the config
        alone (`grove.models.memory`); 0 when the method makes no estimate."""
        return 0

    @abstractmethod
    def construct(self, config: C, data: SplitData, seed: int) -> Built: ...

    @abstractmethod
    def train(self, config: C, built: Built, data: SplitData, seed: int) -> Built: ...

    @abstractmethod
    def relearn(self, config: C, built: Built, data: SplitData, seed: int) -> Built: ...

    @abstractmethod
    def searcher(self, config: C, built: Built, device: str | torch.device = "cpu") -> Searcher: ...


def check_memory(
    method: Method[Any], config: MethodConfig, n_items: int, verbs: tuple[str, ...], device: str | torch.device
) -> None:
    """Refuse (`TooLargeError`, before allocating) a verb whose estimate exceeds the device's memory."""
    from grove.models.memory import require

    sizes = ", ".join(f"{f}={getattr(config, f)!r}" for f in method.size_fields if hasattr(config, f))
    for verb in verbs:
        require(
            method.memory_bytes(config, n_items, verb),
            device,
            f"{method.name} {verb} of {n_items:,} items" + (f" with {sizes}" if sizes else ""),
        )


def state_to_bytes(state: dict[str, Any]) -> bytes:
    """Serialise a state dict (tensors, numbers, strings) with torch.save."""
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


def bytes_to_state(data: bytes, device: str | torch.device = "cpu") -> dict[str, Any]:
    """Inverse of `state_to_bytes`; uses weights_only=True (no code runs on load)."""
    return torch.load(io.BytesIO(data), map_location=device, weights_only=True)


def require_artifact(built: Built, name: str, method: str) -> bytes:
    """The artifact ``name`` or a StateError that says the version was never trained."""
    if name not in built.artifacts:
        raise StateError(f"this {method} version has no '{name}': it was never trained (run `grove train` on it first)")
    return built.artifacts[name]


def resolve_device(device: str | torch.device | None) -> torch.device:
    """'cuda' if asked and available, else CPU; a clear error if CUDA is asked but missing."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    check_device(str(device))
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise GroveError("device 'cuda' was asked for but no CUDA GPU is available")
    return dev
