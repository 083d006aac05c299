"""Which benchmarks a recipe evaluates and where their files are: the ``[eval.<name>]`` tables."""

from __future__ import annotations

from pydantic import Field, model_validator

from mcmdpo.batch.spec import Spec
from mcmdpo.evaluation.benchmarks import BENCHMARKS
from mcmdpo.evaluation.benchmarks.altext import AltextSource
from mcmdpo.evaluation.benchmarks.amber import AmberSource
from mcmdpo.evaluation.benchmarks.mmhal import MMHalSource
from mcmdpo.evaluation.benchmarks.objhal import ObjHalSource


class BenchmarkSources(Spec):
    """``benchmarks`` and one file table per benchmark that needs one."""

    benchmarks: tuple[str, ...] = Field(("test",), description=f"benchmarks to run: {', '.join(BENCHMARKS)}")
    talt: AltextSource | None = Field(None, description="TAlt test file and images")
    palt: AltextSource | None = Field(None, description="PAlt test file and images")
    objhal: ObjHalSource | None = Field(None, description="Object HalBench files")
    mmhal: MMHalSource | None = Field(None, description="MMHal-Bench files")
    amber: AmberSource | None = Field(None, description="AMBER files")

    @model_validator(mode="after")
    def _check_benchmarks(self) -> BenchmarkSources:
        unknown = [b for b in self.benchmarks if b not in BENCHMARKS]
        if unknown:
            raise ValueError(f"unknown benchmark(s) {unknown}; known: {', '.join(BENCHMARKS)}")
        if len(set(self.benchmarks)) != len(self.benchmarks) or not self.benchmarks:
            raise ValueError("benchmarks must be a non-empty list without repeats")
        for name in self.benchmarks:
            if BENCHMARKS[name].source is not None and getattr(self, name) is None:
                raise ValueError(f"benchmark {name!r} needs its section [eval.{name}] (file paths)")
        return self
