"""What the staged families' config dataclasses (ldm, somar) share: fields of JSON types checked strictly (a string
"False" or "1000" is refused, never read as True or cast: the LatentDiffusion seed's trap), int tuples stored as
lists, unknown keys refused when loading."""

from __future__ import annotations

from dataclasses import asdict, fields


def type_name(kind) -> str:
    return " or ".join(k.__name__ for k in kind) if isinstance(kind, tuple) else kind.__name__


class TypedConfig:
    """Mixin of a config dataclass with a `family` field; the subclass sets FIELD_TYPES ({field: type or tuple of
    types}; fields not named are not checked), TUPLES (int-tuple fields) and OPTIONAL (fields that may be None)."""

    FIELD_TYPES: dict = {}
    TUPLES: tuple[str, ...] = ()
    OPTIONAL: tuple[str, ...] = ()

    def _validate_types(self) -> None:
        """ValueError naming the first field whose value is not of its JSON type."""
        for f in fields(self):
            value, kind = getattr(self, f.name), self.FIELD_TYPES.get(f.name)
            if kind is None or (value is None and f.name in self.OPTIONAL):
                continue
            ok = isinstance(value, kind) and not (isinstance(value, bool) and kind is not bool)
            if f.name in self.TUPLES:
                ok = all(isinstance(v, int) and not isinstance(v, bool) for v in value)
            if not ok:
                raise ValueError(f"{self.family} config '{f.name}' must be a {type_name(kind)}, got {value!r}")

    def to_dict(self) -> dict:
        out = asdict(self)
        for name in self.TUPLES:
            out[name] = list(getattr(self, name))
        return out

    @classmethod
    def from_dict(cls, data: dict):
        """Build from a saved dict; unknown keys (and another family) are an error, never silently dropped."""
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown {cls.family} config keys {unknown}")
        return cls(**data)
