"""The `Corpus` kind: sources, curation settings, tokenizer and output of one corpus."""

from __future__ import annotations

import functools
import re
import sys
import unicodedata
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, ValidationInfo, field_validator

from cpt_operator.api.common import (
    CEL,
    APIModel,
    Condition,
    Location,
    Quantity,
    StatusModel,
    StorageLocation,
    describe_location,
    overlap,
)


def regex_problem(pattern: str) -> str | None:
    """Why `pattern` cannot be a PII pattern (None when it can): it must compile under RE2
    (linear-time matching: no backreferences or lookaround, so no catastrophic backtracking)
    and under Python's `re` (the curation pods use it), and must not match the empty string
    (it would put a placeholder between every two characters)."""
    try:
        import re2  # google-re2

        options = re2.Options()
        options.log_errors = False  # no absl lines on stderr
        try:
            compiled = re2.compile(pattern, options=options)
        except re2.error as exc:
            detail = exc.args[0].decode("utf-8", "replace") if exc.args and isinstance(exc.args[0], bytes) else str(exc)
            return f"is not a valid RE2 regular expression (no backreferences or lookaround): {detail[:120]}"
        matches_empty = compiled.search("") is not None
    except ImportError:  # pragma: no cover - google-re2 is a dependency; Python's re still checks syntax
        matches_empty = None
    try:
        python = re.compile(pattern)
    except re.error as exc:
        return f"is not a valid regular expression: {exc}"
    if matches_empty is None:
        matches_empty = python.search("") is not None
    if matches_empty:
        return "matches the empty string: it would put a placeholder between every two characters"
    return None


def _check_regex(value: str) -> str:
    problem = regex_problem(value)
    if problem:
        raise ValueError(problem)
    return value


@functools.lru_cache(maxsize=1)
def unicode_scripts() -> frozenset[str]:
    """Script names the curation's script filter recognises: the first word of the Unicode
    names of letters (lower case; CJK ideographs are 'han')."""
    names = set()
    for cp in range(sys.maxunicode + 1):
        ch = chr(cp)
        if ch.isalpha():
            name = unicodedata.name(ch, "")
            if name:
                first = name.split(" ", 1)[0]
                names.add("han" if first == "CJK" else first.lower())
    return frozenset(names)


_COMMON_SCRIPTS = {"latin", "cyrillic", "greek", "han", "arabic", "hebrew", "devanagari", "hangul", "hiragana", "katakana", "thai"}


def _check_script(value: str) -> str:
    if value.lower() not in _COMMON_SCRIPTS and value.lower() not in unicode_scripts():
        raise ValueError(
            f"{value[:64]!r} is not a Unicode script name (e.g. Latin, Cyrillic, Greek, Han, Arabic, Devanagari): "
            "the language filter would drop every document"
        )
    return value


class CorpusSource(APIModel):
    """One input location and the files taken from it."""

    location: Location = Field(description="Where the input files are.")
    # Each pattern is bounded: the CEL rule below walks every character of every pattern, and
    # the API server refuses a CRD whose rules it cannot bound (estimated cost limits).
    include: list[Annotated[str, Field(min_length=1, max_length=256)]] = Field(
        default_factory=lambda: ["**/*"], min_length=1, max_length=32,
        description="Glob patterns of files below the location; .gz and .zst files are decompressed.",
    )  # fmt: skip

    cel_rules = (
        CEL(
            "self.include.all(p, !p.startsWith('/') && !p.contains('..'))",
            "include patterns must be relative and must not contain '..'",
            ".include",
        ),
    )


class NormalizeSpec(APIModel):
    """Unicode normalisation and whitespace clean-up."""

    enabled: bool = Field(True, description="Run this stage.")
    form: Literal["NFC", "NFKC"] = Field("NFC", description="Unicode normalisation form.")


class LengthFilterSpec(APIModel):
    """Drop documents outside a length range, in tokens."""

    enabled: bool = Field(True, description="Run this stage.")
    min_tokens: int = Field(16, ge=0, le=10_000_000, description="Minimum document length in tokens.")
    max_tokens: int = Field(1_000_000, ge=1, le=100_000_000, description="Maximum document length in tokens.")

    cel_rules = (CEL("self.minTokens <= self.maxTokens", "minTokens must not exceed maxTokens", ".minTokens"),)


class ExactDedupSpec(APIModel):
    """Drop documents whose normalised content hash was seen before."""

    enabled: bool = Field(True, description="Run this stage.")


class NearDedupSpec(APIModel):
    """MinHash-LSH near-duplicate removal over word n-gram shingles; the first occurrence is kept."""

    enabled: bool = Field(True, description="Run this stage.")
    num_perm: int = Field(128, ge=16, le=1024, description="Number of MinHash permutations.")
    threshold: float = Field(0.8, gt=0.0, lt=1.0, description="Jaccard similarity at or above which a document is a near-duplicate.")
    ngram: int = Field(5, ge=1, le=32, description="Words per shingle.")


class QualityFilterSpec(APIModel):
    """Drop documents a small reference language model finds too surprising (perplexity)."""

    enabled: bool = Field(False, description="Run this stage.")
    reference_model: Location | None = Field(None, description="A small causal LM folder loadable by transformers.")
    max_perplexity: float = Field(1000.0, gt=1.0, description="Documents above this perplexity are dropped.")
    batch_size: int = Field(16, ge=1, le=1024, description="Documents scored per batch.")

    cel_rules = (
        CEL("!self.enabled || has(self.referenceModel)", "referenceModel is required when the quality filter is enabled", ".referenceModel"),
    )


class NationalIdPatternSpec(APIModel):
    """A national ID format to scrub, as a regular expression."""

    name: str = Field(max_length=32, pattern=r"^[a-z][a-z0-9_]*$", description="Kind name used in counts and replacements.")
    regex: Annotated[str, AfterValidator(_check_regex)] = Field(
        min_length=1, max_length=512,
        description="Regular expression matching one ID, in RE2 syntax (no backreferences or lookaround); must not match the empty string.",
    )  # fmt: skip


class PiiSpec(APIModel):
    """Replace personal data with a placeholder; each kind is counted."""

    enabled: bool = Field(True, description="Run this stage.")
    kinds: list[Literal["email", "phone", "ip", "creditCard"]] = Field(
        default_factory=lambda: ["email", "phone", "ip", "creditCard"], max_length=4,
        description="Built-in kinds to scrub. Payment-card numbers must pass the Luhn check.",
    )  # fmt: skip
    national_ids: list[NationalIdPatternSpec] = Field(default_factory=list, max_length=16, description="Extra ID formats.")


class LanguageFilterSpec(APIModel):
    """Keep documents mostly written in the given Unicode scripts."""

    enabled: bool = Field(False, description="Run this stage.")
    scripts: list[Annotated[str, Field(min_length=1, max_length=64), AfterValidator(_check_script)]] = Field(
        default_factory=lambda: ["Latin"], min_length=1, max_length=16,
        description="Unicode script names (Latin, Cyrillic, Greek, Han, Arabic, ...; case does not matter).",
    )  # fmt: skip
    min_fraction: float = Field(0.8, gt=0.0, le=1.0, description="Fraction of letters that must be in those scripts.")


class CurationSpec(APIModel):
    """The curation pipeline; every stage can be switched off and reports what it removed."""

    normalize: NormalizeSpec = Field(default_factory=NormalizeSpec, description="Unicode normalisation.")
    length_filter: LengthFilterSpec = Field(default_factory=LengthFilterSpec, description="Length filter.")
    exact_dedup: ExactDedupSpec = Field(default_factory=ExactDedupSpec, description="Exact deduplication.")
    near_dedup: NearDedupSpec = Field(default_factory=NearDedupSpec, description="Near-duplicate removal.")
    quality_filter: QualityFilterSpec = Field(default_factory=QualityFilterSpec, description="Perplexity quality filter.")
    pii: PiiSpec = Field(default_factory=PiiSpec, description="PII scrubbing.")
    language: LanguageFilterSpec = Field(default_factory=LanguageFilterSpec, description="Language/script filter.")


class CurationResources(APIModel):
    """Resources of each curation pod."""

    cpu: Quantity = Field("2", description="CPU request and limit of each curation pod.")
    memory: Quantity = Field("8Gi", description="Memory request and limit of each curation pod.")
    gpu: int = Field(0, ge=0, le=8, description="GPUs per pod (speeds up the quality filter).")


class CorpusSpec(APIModel):
    """A corpus to curate and tokenize into packed shards."""

    sources: list[CorpusSource] = Field(min_length=1, max_length=64, description="Input locations.")
    format: Literal["jsonl", "parquet", "text"] = Field("jsonl", description="Format of the input files.")
    text_field: str = Field("text", min_length=1, max_length=128, description="Field holding the text (jsonl, parquet).")
    text_unit: Literal["file", "paragraph", "line"] = Field(
        "file", description="format text: what one document is: a whole file, a blank-line-separated paragraph, or a line."
    )
    tokenizer: Location = Field(description="Tokenizer folder (the base model's), loadable by transformers.")
    curation: CurationSpec = Field(default_factory=CurationSpec, description="Curation stages.")
    eval_fraction: float = Field(0.01, ge=0.0, lt=0.5, description="Fraction of kept documents held out for evaluation.")
    output: StorageLocation = Field(description="Where the shards, index and manifest are written.")
    parallelism: int = Field(1, ge=1, le=256, description="Curation pods; near-duplicates across their slices are still removed.")
    resources: CurationResources = Field(default_factory=CurationResources, description="Resources per curation pod.")
    seed: int = Field(0, ge=0, description="Seed of the evaluation split.")

    @field_validator("output")
    @classmethod
    def _output_apart_from_sources(cls, output: StorageLocation, info: ValidationInfo) -> StorageLocation:
        for i, source in enumerate(info.data.get("sources") or []):
            relation = overlap(output, source.location)
            if relation:
                what = {"equals": "is", "inside": "lies inside", "contains": "contains"}[relation]
                raise ValueError(
                    f"{describe_location(output)} {what} sources[{i}] ({describe_location(source.location)}): "
                    "curation would read its own output; write the output elsewhere"
                )
        return output


class StageCount(StatusModel):
    """What one curation stage saw and removed."""

    name: str = Field(description="Stage name.")
    input: int = Field(0, ge=0, description="Documents in.")
    removed: int = Field(0, ge=0, description="Documents removed.")
    modified: int = Field(0, ge=0, description="Documents changed but kept (e.g. PII scrubbed).")


class TokenizerReport(StatusModel):
    """Tokenizer efficiency on a sample of the kept text."""

    chars_per_token: float | None = Field(None, description="Characters per token.")
    fertility: float | None = Field(None, description="Tokens per word.")
    proposed_extension: list[Annotated[str, Field(max_length=256)]] = Field(default_factory=list, max_length=256, description="Frequent fragmented words a CPTRun may add.")


class CorpusStatus(StatusModel):
    """Observed state of a Corpus."""

    phase: Literal["Pending", "Curating", "Ready", "Failed"] | None = Field(None, description="Where the corpus is in its life.")
    observed_generation: int | None = Field(None, ge=0, description="metadata.generation last acted on.")
    conditions: list[Condition] = Field(default_factory=list, max_length=16, description="Standard conditions (Ready, Failed).")
    job_name: str | None = Field(None, description="The curation Job.")
    documents: int | None = Field(None, ge=0, description="Documents kept.")
    tokens: int | None = Field(None, ge=0, description="Tokens in the training split.")
    shards: int | None = Field(None, ge=0, description="Training shards written.")
    stages: list[StageCount] = Field(default_factory=list, max_length=16, description="Per-stage document counts.")
    output_uri: str | None = Field(None, description="Where the manifest is.")
    tokenizer: TokenizerReport | None = Field(None, description="Tokenizer efficiency.")
