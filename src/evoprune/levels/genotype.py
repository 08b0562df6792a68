"""A DarwinLM genotype: one compression level per module, attention and MLP genes kept apart."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Genotype:
    attention: tuple[int, ...]  # level of each layer's attention (0 = removed)
    mlp: tuple[int, ...]  # level of each layer's MLP (0 = removed)

    def genes(self, kind: str) -> tuple[int, ...]:
        return self.attention if kind == "attention" else self.mlp

    def with_genes(self, kind: str, genes: list[int] | tuple[int, ...]) -> "Genotype":
        if kind == "attention":
            return Genotype(tuple(genes), self.mlp)
        return Genotype(self.attention, tuple(genes))

    def to_dict(self) -> dict:
        return {"attention": list(self.attention), "mlp": list(self.mlp)}

    @classmethod
    def from_dict(cls, d: dict) -> "Genotype":
        return cls(tuple(int(x) for x in d["attention"]), tuple(int(x) for x in d["mlp"]))
