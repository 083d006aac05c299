"""``[[eval.baselines]]``: zero-shot vision-language models evaluated next to the trained LLaVA rows.

One entry per model. ``kind = "hf"``: any model transformers loads as an image-text-to-text model (a
local HF folder or a hub id); ``kind = "api"``: any OpenAI-compatible chat endpoint with image input
(``[eval.baselines.api]``). The prompt is the benchmark's question, with ``few_shot`` example alt-texts
from the benchmark's training file (``[eval.examples]``) on alt-text benchmarks, formatted by
``prompt`` (see :mod:`mcmdpo.evaluation.baselines.prompt`); decoding is greedy (temperature 0).

Only what changes a response is in a task's key (:meth:`BaselineSpec.key`): the row ``label``, the
endpoint's key variable, concurrency, retries, ``params_b`` and ``trust_remote_code`` are not.
"""

from __future__ import annotations

import string
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, StringConstraints, field_validator, model_validator

from mcmdpo.batch.spec import EnvStr, Spec

BaselineName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")]
DEFAULT_PROMPT = (
    "{question}\nExamples of alt-text written for other images:\n{examples}\nAlt-text for this image:"
)
"""The paper's protocol ("two example alt-texts in the inference prompt"), as this toolkit words it."""
PROMPT_FIELDS = ("question", "examples")
KEY_FIELDS = ("kind", "model", "revision", "dtype", "few_shot", "prompt", "system", "max_new_tokens")


class ApiEndpoint(Spec):
    """``[eval.baselines.api]``: the OpenAI-compatible endpoint of a ``kind = "api"`` baseline."""

    base_url: EnvStr = Field(description="endpoint base URL ending in /v1 (vLLM: http://HOST:8000/v1)")
    api_key_env: str = Field(
        "OPENAI_API_KEY", description="environment variable holding the key ('' = no auth); never stored"
    )
    concurrency: int = Field(8, ge=1, le=1024, description="requests in flight at once")
    max_retries: int = Field(6, ge=0, description="retries of 429/5xx/timeouts (exponential backoff)")
    backoff_s: float = Field(2.0, gt=0, description="first retry delay; doubles each retry (with jitter)")
    timeout_s: float = Field(120.0, gt=0, description="per-request timeout in seconds")
    image_detail: Literal["auto", "low", "high"] | None = Field(
        None, description="the image_url 'detail' sent with each image (None: not sent)"
    )
    cache_dir: EnvStr | None = Field(None, description="reply cache (default: <run_dir>/llm-cache)")


class BaselineSpec(Spec):
    """One ``[[eval.baselines]]`` entry: a zero-shot model, how to reach it, how to prompt it."""

    name: BaselineName = Field(description="row key and folder name (metrics/<name>/...); unique")
    label: str | None = Field(None, description="report row label (default: name), e.g. 'InstructBLIP (13B)'")
    kind: Literal["hf", "api"] = Field(
        "hf", description="hf: transformers on the task's GPUs; api: an endpoint"
    )
    model: EnvStr = Field(
        description="hf: local HF folder or hub id; api: the model name sent to the endpoint"
    )
    revision: str | None = Field(None, description="hf: hub revision (a commit pins the weights)")
    trust_remote_code: bool = Field(
        False, description="hf: allow code from the model's repository (refused at validation otherwise)"
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="hf weights dtype (auto: the config's 16-bit dtype on GPU, float32 on CPU)"
    )
    params_b: float | None = Field(
        None,
        gt=0,
        description="parameters in billions, for GPU placement when the config cannot be read "
        "at validation (a hub id not in the local HF cache)",
    )
    few_shot: int = Field(2, ge=0, le=16, description="example alt-texts in the prompt (alt-text benchmarks)")
    prompt: str = Field(DEFAULT_PROMPT, description="user text; {question} and (few_shot > 0) {examples}")
    system: str | None = Field(None, description="system message (None: none sent)")
    max_new_tokens: int | None = Field(None, ge=1, description="default: eval.max_new_tokens")
    batch_size: int | None = Field(None, ge=1, description="hf prompts per generate call (default: eval's)")
    api: ApiEndpoint | None = Field(None, description="kind = 'api': the endpoint")

    @model_validator(mode="after")
    def _check(self) -> BaselineSpec:
        if (self.kind == "api") != (self.api is not None):
            need = "needs an [eval.baselines.api] table" if self.kind == "api" else "takes no api table"
            raise ValueError(f"baseline {self.name!r}: kind = {self.kind!r} {need}")
        fields = {f for _, f, _, _ in string.Formatter().parse(self.prompt) if f is not None}
        unknown = sorted(fields - set(PROMPT_FIELDS))
        if unknown:
            raise ValueError(
                f"baseline {self.name!r}: prompt has unknown field(s) {unknown} (valid: "
                "{question}, {examples})"
            )
        if "question" not in fields or (self.few_shot and "examples" not in fields):
            need = "{question} and {examples}" if self.few_shot else "{question}"
            raise ValueError(f"baseline {self.name!r}: prompt must contain {need}")
        from mcmdpo.evaluation.baselines.checkpoints import remote_code_problem

        problem = remote_code_problem(self)
        if problem:
            raise ValueError(problem)
        return self

    @property
    def row_label(self) -> str:
        return self.label or self.name

    def key(self) -> dict[str, Any]:
        """What decides this baseline's responses (besides the benchmark and the examples file)."""
        out = {k: getattr(self, k) for k in KEY_FIELDS}
        if self.api is not None:
            out["base_url"] = self.api.base_url
            out["image_detail"] = self.api.image_detail
        return out


def few_shot_applies(baseline: BaselineSpec, benchmark: str) -> bool:
    """Example alt-texts go into the prompts of alt-text benchmarks only."""
    from mcmdpo.evaluation.benchmarks import get_benchmark

    return baseline.few_shot > 0 and get_benchmark(benchmark).kind == "altext"


def check_baselines(
    baselines: Sequence[BaselineSpec],
    benchmarks: Sequence[str],
    examples: Mapping[str, str],
    reserved: Collection[str],
) -> None:
    """Names unique and not a trained model's; an existing examples file per few-shot alt-text benchmark."""
    names = [b.name for b in baselines]
    clash = sorted({n for n in names if n in reserved or names.count(n) > 1})
    if clash:
        raise ValueError(
            f"baselines: name(s) {clash} repeated or taken by a trained model ({', '.join(reserved)})"
        )
    for benchmark in dict.fromkeys(benchmarks):
        users = [b.name for b in baselines if few_shot_applies(b, benchmark)]
        if not users or benchmark == "test":  # test: the [data] stage's train split
            continue
        file = examples.get(benchmark)
        if file is None:
            raise ValueError(
                f"examples.{benchmark}: baselines {users} take few-shot alt-texts on {benchmark}: "
                "name its training file, or set few_shot = 0"
            )
        if not Path(file).is_file():
            raise ValueError(f"examples.{benchmark}: file does not exist: {Path(file).absolute()}")


class BaselineSources(Spec):
    """The ``[eval]`` fields of the zero-shot baselines (a mixin of the eval stage's spec)."""

    baselines: tuple[BaselineSpec, ...] = Field((), description="zero-shot models (docs/baselines.md)")
    examples: dict[str, EnvStr] = Field(
        default_factory=dict,
        description="benchmark -> training file of the baselines' few-shot alt-texts "
        "(test: the [data] stage's train split)",
    )

    @field_validator("examples")
    @classmethod
    def _absolute(cls, value: dict[str, str]) -> dict[str, str]:
        """Relative paths start at the submit directory, as every path of a recipe."""
        return {name: str(Path(file).expanduser().absolute()) for name, file in value.items()}

    @model_validator(mode="after")
    def _check_baselines(self) -> BaselineSources:
        from mcmdpo.method.model.folders import MODEL_STAGES

        check_baselines(self.baselines, getattr(self, "benchmarks", ()), self.examples, MODEL_STAGES)
        return self

    def baseline(self, name: str) -> BaselineSpec | None:
        """The entry named ``name`` (None for a trained model)."""
        return next((b for b in self.baselines if b.name == name), None)

    def placement(self, params: Mapping[str, Any], resources: Mapping[str, Any]) -> dict[str, Any]:
        """Resource overrides of an eval task (``Stage.task_resources``; :func:`checkpoints.placement`)."""
        from mcmdpo.batch.errors import ConfigError
        from mcmdpo.evaluation.baselines.checkpoints import placement

        baseline = self.baseline(params["model"])
        if baseline is None:
            return {}
        try:
            return placement(baseline, resources)
        except ConfigError as exc:
            raise ConfigError(exc.message, field=f"eval.baselines.{self.baselines.index(baseline)}") from None
