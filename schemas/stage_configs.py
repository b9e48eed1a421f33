"""Typed configuration of every stage. A stage's config is these fields; a workflow file sets them by name.

They live here, apart from the stage code, so a workflow is validated (unknown stages, unknown fields, wrong
types) without importing heavy stage dependencies such as torch or img2dataset.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from mmcurate.schemas.record import TEXT_FIELDS

TextField = Literal["caption", "alt", "title", "figcaption", "transcript"]
assert set(TextField.__args__) == set(TEXT_FIELDS)  # type: ignore[attr-defined]


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StageConfig(StrictModel):
    """Fields every stage has: what one of its Ray workers reserves, how many run, what each has in hand."""

    batch_size: int = Field(16, ge=1, description="records per batch handed to a batch stage (a model's batch)")
    concurrency: int = Field(2, ge=1, description="Ray workers running the stage")
    num_cpus: float = Field(1.0, gt=0, description="CPUs one worker reserves")
    num_gpus: float = Field(0.0, ge=0, description="GPUs one worker reserves (> 0: a model stage runs on CUDA)")
    # Records one worker has in hand at once, each in its own thread: a stage that waits on the network (or
    # whose work releases the GIL: image decode, resize, encode) overlaps them, as img2dataset's thread_count does.
    # Stages streamed together in one worker use the largest of their values.
    threads: int = Field(1, ge=1, le=512, description="records a worker processes at once, one thread each")

    def input_files(self) -> tuple[str, ...]:
        """Local files the stage reads besides its upstream; their bytes are part of the stage's fingerprint."""
        return ()

    def run_dir_inputs(self) -> tuple[str, ...]:
        """Those of ``input_files`` that live inside the run directory yet are no stage's output (labels a person
        imported): hashed like any input, where another stage's files there are covered by its fingerprint."""
        return ()

    def outside_run_dir(self) -> dict[str, str]:
        """Paths (field -> path) the run refuses inside its run directory: inputs no stage writes, which the
        fingerprint would skip there (it takes files under the run root for another stage's output)."""
        return {}

    def decision_fields(self) -> dict[str, object]:
        """What a decision rests on, for ``explain`` and the stage's marker: its model and thresholds. Nothing that
        may hold a secret."""
        dumped = self.model_dump(mode="json")
        return {name: dumped[name] for name in ("model", "min_score", "score", "top_fraction") if dumped.get(name)}

    def columns_needed(self) -> frozenset[str]:
        """Extension columns this config reads beyond what the stage's registration always needs."""
        return frozenset()

    def columns_added(self) -> frozenset[str] | None:
        """Extension columns this config writes, of those the registration declares; None: all of them."""
        return None

    def column_origins(self) -> dict[str, str]:
        """What makes the values of extension columns this config writes, where a later stage must agree with it
        (the model behind an ``embedding``): column -> an identity string."""
        return {}

    def origins_needed(self) -> dict[str, str]:
        """Extension columns this config reads whose values must come from one origin (``column_origins``) on
        every path into the stage: column -> that identity."""
        return {}


class FetchConfig(StrictModel):
    """The fetch guard's whole policy: every page, robots.txt, media and URL-list download meets these limits on
    every request and every redirect hop (``mmcurate.stages.crawl.opener``).

    Private, loopback and link-local targets are refused unless listed in ``allow_networks`` (CIDRs); a CIDR that
    does not parse fails when the workflow is loaded, not on the first fetch."""

    timeout_s: float = Field(10.0, gt=0)  # per socket operation (connect, TLS handshake, each send and recv)
    deadline_s: float = Field(60.0, gt=0)  # whole fetch: robots.txt, every redirect hop, headers and body
    max_bytes: int = Field(20_000_000, ge=1)
    max_redirects: int = Field(5, ge=0)
    retries: int = Field(0, ge=0)
    allow_networks: tuple[str, ...] = ()  # CIDRs allowed despite being private/loopback, e.g. "127.0.0.0/8"
    allowed_domains: tuple[str, ...] = ()  # every fetch stays on these hosts and their subdomains; empty: any host
    allowed_schemes: tuple[Literal["http", "https"], ...] = ("http", "https")
    user_agent: str = "mmcurate/0.1"
    respect_robots: bool = True
    disallowed_header_directives: tuple[str, ...] = ("noai", "noimageai")
    # Politeness, enforced across every thread and worker of a run (``mmcurate.stages.crawl.politeness``). A host
    # is hostname:port. Every request counts, robots.txt and each redirect hop included, against its own host.
    per_host_concurrency: int | None = Field(8, ge=1)  # fetches in flight to one host at once; None: no cap
    per_host_delay_s: float = Field(0.0, ge=0)  # seconds between the starts of two fetches to one host
    respect_crawl_delay: bool = True  # robots.txt Crawl-delay (our group, else *) raises the host's delay
    # a host whose Crawl-delay is above this is not crawled (crawl_delay_too_long), rather than crawled faster
    # than it asked or left to stall the run
    max_crawl_delay_s: float = Field(10.0, ge=0)
    # after this many connection errors, timeouts and 5xx/429 answers in a row from one host, its further fetches
    # are host_failing (refused unsent) for the rest of the run; None: never
    host_error_budget: int | None = Field(20, ge=1)
    # gate actors the hosts are spread over (one serves a few hundred to thousands of acquires a second)
    gate_shards: int = Field(1, ge=1, le=256)

    @model_validator(mode="after")
    def _valid_networks_and_domains(self) -> FetchConfig:
        import ipaddress  # stdlib and light: schemas/ stays importable without the crawl's dependencies

        for cidr in self.allow_networks:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError as err:
                raise ValueError(f"allow_networks: {cidr!r} is not a CIDR: {err}") from None
        for domain in self.allowed_domains:
            if not domain.strip(".") or any(c in domain for c in "/:@ "):
                raise ValueError(f"allowed_domains: {domain!r} is not a host name (no scheme, port or path)")
        return self

    def networks(self) -> tuple:  # tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
        import ipaddress

        return tuple(ipaddress.ip_network(cidr, strict=False) for cidr in self.allow_networks)

    @property
    def user_agent_token(self) -> str:
        """The product token robots.txt groups and X-Robots-Tag scopes name: "mmcurate/0.1" -> "mmcurate"."""
        return self.user_agent.split("/", 1)[0].strip().lower()


def _local_path(path: str) -> str:
    # input files are fingerprinted by their bytes and named in the manifest: a URI (s3://key:secret@…) would be
    # neither hashed nor safe to write down
    if "://" in path:
        raise ValueError(f"{path.split('://', 1)[0]}://… is not a local path; input files are read from local disk")
    return path


class UrlListInput(StrictModel):
    path: str
    format: Literal["csv", "parquet", "jsonl"] | None = None  # None: from the file extension
    url_column: str = "url"
    caption_column: str | None = "caption"

    @field_validator("path")
    @classmethod
    def _is_local(cls, path: str) -> str:
        return _local_path(path)


class CrawlConfig(StageConfig):
    # a fetcher waits on the network, not the CPU: more of them overlap their waits
    num_cpus: float = Field(0.5, gt=0, description="CPUs one worker reserves")
    url_lists: tuple[UrlListInput, ...] = ()
    seeds: tuple[str, ...] = ()
    warcs: tuple[str, ...] = ()
    allowed_domains: tuple[str, ...] = ()  # page crawl stays within these hosts; empty: the seeds' hosts
    max_depth: int = Field(3, ge=0)
    max_pages: int = Field(1000, ge=1)
    # a chunk is the unit of streaming and of resume: a killed run loses at most the chunks in flight
    chunk_rows: int = Field(500, ge=1, description="candidates fetched, and kept across a kill, together")
    threads: int = Field(32, ge=1, le=512, description="fetches one worker has in flight, one thread each")
    # A page's distinct media references that are fetched (or read from a WARC), at most: without it one page with
    # thousands of <img> tags fans out into thousands of fetches. The rest are crawl_limit rows; a repeat of media
    # already referenced on the page is a duplicate_reference row and does not count (stages/crawl/pages.py).
    max_refs_per_page: int = Field(1000, ge=1)
    fetch: FetchConfig = FetchConfig()

    def input_files(self) -> tuple[str, ...]:
        return (*(spec.path for spec in self.url_lists), *self.warcs)

    @field_validator("warcs")
    @classmethod
    def _warcs_are_local(cls, warcs: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(_local_path(path) for path in warcs)

    @model_validator(mode="after")
    def _has_input(self) -> CrawlConfig:
        if not (self.url_lists or self.seeds or self.warcs):
            raise ValueError("crawl needs at least one of url_lists, seeds, warcs")
        return self

    @model_validator(mode="after")
    def _page_domains_inside_fetch_domains(self) -> CrawlConfig:
        # a page crawl whose hosts fetch.allowed_domains excludes entirely would refuse every page: say so at load
        from urllib.parse import urlsplit

        limit = [d.strip(".").lower() for d in self.fetch.allowed_domains]
        if not (self.seeds and limit):
            return self
        scope = [d.strip(".").lower() for d in self.allowed_domains] or [
            (urlsplit(seed).hostname or "").lower() for seed in self.seeds
        ]

        def inside(a: str, b: str) -> bool:
            return a == b or a.endswith("." + b)

        if not any(inside(a, b) or inside(b, a) for a in scope for b in limit):
            raise ValueError(f"the page crawl's hosts {scope} lie outside fetch.allowed_domains {limit}")
        return self


class AlignConfig(StageConfig):
    caption_priority: tuple[TextField, ...] = ("caption", "figcaption", "alt", "title")
    min_caption_chars: int = Field(3, ge=1)
    junk_patterns: tuple[str, ...] | None = None  # None: the built-in list (mmcurate.stages.align.text.DEFAULT_JUNK_PATTERNS)
    image_max_side: int = Field(512, ge=8)
    image_min_side: int = Field(16, ge=1)
    image_max_pixels: int = Field(40_000_000, ge=1)
    image_format: Literal["jpg", "png", "keep"] = "jpg"
    image_quality: int = Field(90, ge=1, le=100)
    audio_rate: int = Field(16_000, ge=1000)
    min_clip_s: float = Field(0.3, ge=0)
    max_clip_s: float = Field(30.0, gt=0)
    max_audio_s: float = Field(600.0, gt=0)  # also caps decoded samples: max_audio_s of 48 kHz stereo, any layout


class ShardConfig(StageConfig):
    prefix: str = Field("shard", pattern=r"^[A-Za-z0-9_]+$")
    samples_per_shard: int = Field(1000, ge=1)
    max_shard_bytes: int = Field(1 << 30, ge=1024)


class ClipModelSpec(StrictModel):
    """Which CLIP scores: an open_clip model by name with a pretrained tag (or a weights file), or a checkpoint
    directory written by ``mmcurate train`` (its ``local-dir:`` layout, audio tower included when it has one)."""

    name: str | None = None  # an open_clip.list_models() name, e.g. "ViT-B-32"
    pretrained: str | None = None  # with name: an open_clip pretrained tag ("laion2b_s34b_b79k") or a weights file
    checkpoint: str | None = None  # a directory holding open_clip_config.json + open_clip_pytorch_model.bin
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"

    @model_validator(mode="after")
    def _one_source(self) -> ClipModelSpec:
        if (self.checkpoint is None) == (self.name is None):
            raise ValueError("give either model.checkpoint, or model.name (with model.pretrained)")
        if self.name is not None and not self.pretrained:
            # open_clip builds a named model with random weights when given none: its scores would mean nothing
            raise ValueError(f"model.name {self.name!r} needs model.pretrained: an open_clip tag or a weights file")
        if self.checkpoint is not None and self.pretrained is not None:
            raise ValueError("model.pretrained goes with model.name; a checkpoint directory holds its own weights")
        return self

    def weight_files(self) -> tuple[str, ...]:
        """The local files holding the weights (their bytes belong in the fingerprint of a stage using them)."""
        import os

        if self.checkpoint is not None:
            names = ("open_clip_config.json", "open_clip_pytorch_model.bin", "audio_tower.pt")
            paths = [os.path.join(self.checkpoint, name) for name in names]
            return tuple(p for p in paths if not p.endswith("audio_tower.pt") or os.path.exists(p))
        if self.pretrained and os.path.isfile(self.pretrained):
            return (self.pretrained,)
        return ()

    def identity(self) -> str:
        """Which weights, as written in the workflow: two specs naming the same weights embed alike. Precision is
        left out on purpose: bf16 and fp32 embeddings of one model differ by far less than any eps."""
        import os

        # "models/a", "./models/a/" and a symlink to it alike
        if self.checkpoint is not None:
            return f"checkpoint:{os.path.realpath(self.checkpoint)}"
        if self.pretrained and os.path.isfile(self.pretrained):  # a weights file, not an open_clip tag
            return f"{self.name}:{os.path.realpath(self.pretrained)}"
        return f"{self.name}:{self.pretrained}"


class ClipScoreConfig(StageConfig):
    """Image–text (and audio–text, with an audio tower) cosine similarity of each sample under a CLIP model,
    stored in ``scores`` as ``clip_score.<model id>.image_text`` / ``.audio_text``; samples below ``min_score``
    for their modality are ``clip_score_low``. A whole-run cut (keep the top fraction) is a ``score_filter``."""

    model: ClipModelSpec
    min_score: dict[Literal["image", "audio"], float] = {}  # absolute cosine thresholds; a modality absent: no cut
    embedding: bool = False  # also write each sample's unit-norm image (else audio) embedding, for semantic dedupe

    def columns_added(self) -> frozenset[str]:
        return frozenset({"embedding"}) if self.embedding else frozenset()

    def column_origins(self) -> dict[str, str]:
        return {"embedding": self.model.identity()} if self.embedding else {}

    def input_files(self) -> tuple[str, ...]:
        """The model's weights: a checkpoint rewritten in place must re-score (a checkpoint another stage of the
        run publishes is covered by that stage's fingerprint instead)."""
        return self.model.weight_files()
    batch_size: int = Field(64, ge=1, description="samples per forward pass")
    threads: int = Field(4, ge=1, le=512, description="threads decoding and resizing a batch's images")

    @model_validator(mode="after")
    def _fp16_on_a_gpu(self) -> ClipScoreConfig:
        # CPU autocast runs bf16, not fp16: refuse at load rather than fall back to numbers nobody asked for
        if self.model.precision == "fp16" and self.num_gpus == 0:
            raise ValueError("model.precision fp16 needs a GPU (num_gpus > 0); on a CPU use bf16 or fp32")
        return self


class ScoreFilterConfig(StageConfig):
    """Keep the samples whose score ``score`` (a key of ``scores``, or an fnmatch pattern such as
    ``clip_score.*.image_text``: the first matching key) is in the top ``top_fraction`` of the whole run, computed
    exactly over every record that has it. Records without the score are kept or dropped by ``missing``; a run in
    which no record has it is an error, not a filter that keeps everything."""

    score: str
    top_fraction: float = Field(..., gt=0, le=1)
    missing: Literal["keep", "reject"] = "keep"


class TrainFilterConfig(StageConfig):
    """Train a filter model (a small CLIP, Apple's data-filtering-network recipe) with ``mmcurate train`` on the
    records that ``where`` selects (trusted data), and publish it under the stage's ``artifacts/model``; every
    record passes through unchanged. ``train_config`` is a ``mmcurate train`` YAML whose ``data`` shard paths
    the stage fills in."""

    train_config: str
    where: str = Field(..., description="a DuckDB SQL predicate over record columns: the trusted records")
    samples_per_shard: int = Field(200, ge=1)

    def input_files(self) -> tuple[str, ...]:
        return (self.train_config,)

    @field_validator("train_config")
    @classmethod
    def _is_local(cls, path: str) -> str:
        return _local_path(path)


class SelectConfig(StageConfig):
    """Keep the records for which ``where`` is true: one DuckDB SQL expression over the record's columns (and the
    extension columns it carries), plus ``modality`` (``image``, ``audio``, ``image_audio`` or ``text``: which
    media the record holds). Examples: ``modality = 'audio'``, ``length(text) >= 20``, ``source = 'page'``,
    ``scores['clip_score.m.image_text'] > 0.3``. A record it is false or null for is ``not_selected``. It reads the
    record alone, deterministically (``schemas.select_expr``: no subquery, file, window or ``random()``), and the
    extension columns it names are ``columns_needed``: the workflow check wants them on every path into it."""

    where: str = Field(..., description="a DuckDB SQL boolean expression over record columns and modality")

    @field_validator("where")
    @classmethod
    def _is_a_predicate(cls, where: str) -> str:
        from mmcurate.schemas.select_expr import check_predicate

        check_predicate(where)  # ValueError naming what DuckDB said; the workflow error adds file and stage
        return where

    def decision_fields(self) -> dict[str, object]:
        return {"where": self.where}

    def columns_needed(self) -> frozenset[str]:
        from mmcurate.schemas.select_expr import extension_columns_read

        return extension_columns_read(self.where)  # e.g. "pii IS NOT NULL" needs a pii stage on every path


# One registration per stage kind: its config, its role, where its implementation lives, and what it needs and
# establishes (capabilities, extension columns); the workflow check reads nothing else.
Role = Literal["source", "map", "global", "sink"]


class StageKind(StrictModel):
    config: type[StageConfig]
    role: Role
    implementation: str  # "module:Class", imported only when the stage runs (validation never imports torch)
    requires: frozenset[str] = frozenset()  # capabilities an earlier stage must provide ("aligned")
    provides: frozenset[str] = frozenset()
    needs_columns: frozenset[str] = frozenset()  # extension columns (schemas.record.EXTENSION_COLUMNS) it reads
    adds_columns: frozenset[str] = frozenset()  # extension columns it may write

    @model_validator(mode="after")
    def _known_columns(self) -> StageKind:
        from mmcurate.schemas.record import EXTENSION_COLUMNS

        unknown = (self.needs_columns | self.adds_columns) - set(EXTENSION_COLUMNS)
        if unknown:
            raise ValueError(f"not extension columns: {sorted(unknown)} (known: {sorted(EXTENSION_COLUMNS)})")
        return self


STAGE_KINDS: dict[str, StageKind] = {}


def register(kind: str, **registration: object) -> StageKind:
    """Register a stage kind; ``registration`` are ``StageKind``'s fields."""
    if kind in STAGE_KINDS:
        raise ValueError(f"stage kind {kind!r} is registered twice")
    STAGE_KINDS[kind] = StageKind(**registration)
    return STAGE_KINDS[kind]


register("crawl", config=CrawlConfig, role="source", implementation="mmcurate.stages.crawl:CrawlStage",
         provides=frozenset({"raw_media"}))
register("align", config=AlignConfig, role="map", implementation="mmcurate.stages.align:AlignStage",
         requires=frozenset({"raw_media"}), provides=frozenset({"aligned"}))
register("shard", config=ShardConfig, role="sink", implementation="mmcurate.stages.shard:ShardStage",
         requires=frozenset({"aligned"}))
register("train_filter", config=TrainFilterConfig, role="global",
         implementation="mmcurate.stages.train_filter:TrainFilterStage", requires=frozenset({"aligned"}),
         provides=frozenset({"filter_model"}))
register("clip_score", config=ClipScoreConfig, role="map", implementation="mmcurate.stages.clip_score:ClipScoreStage",
         requires=frozenset({"aligned"}), provides=frozenset({"clip_scores"}), adds_columns=frozenset({"embedding"}))
register("select", config=SelectConfig, role="map", implementation="mmcurate.stages.select:SelectStage")
class LabelsConfig(StageConfig):
    """Apply the human labels ``mmcurate label import`` wrote (``labels``: a parquet table, one row per sample key,
    the latest annotation winning): "no match" rejects as ``label_rejected``; "match" sets ``human_match`` so the
    score stages after it keep the sample whatever its score; a corrected caption or transcript replaces ``text``
    (``text_source`` becomes ``label``); a "contains personal data" flag rejects as ``label_personal_data`` when
    ``drop_personal_data``. A missing table keeps everything. The table's bytes are in the fingerprint: new labels
    re-run this stage and the ones after it, never the ones before."""

    labels: str = Field(..., description="the labels table, e.g. ${run_dir}/labels/labels.parquet")
    drop_personal_data: bool = True
    batch_size: int = Field(256, ge=1)

    def input_files(self) -> tuple[str, ...]:
        return (self.labels,)

    def run_dir_inputs(self) -> tuple[str, ...]:
        return (self.labels,)

    @field_validator("labels")
    @classmethod
    def _is_local(cls, path: str) -> str:
        return _local_path(path)


register("labels", config=LabelsConfig, role="map", implementation="mmcurate.stages.labels:LabelsStage",
         requires=frozenset({"aligned"}), adds_columns=frozenset({"human_match"}))
register("score_filter", config=ScoreFilterConfig, role="global",
         implementation="mmcurate.stages.score_filter:ScoreFilterStage", requires=frozenset({"aligned"}))


# ---- dedupe ------------------------------------------------------------------------------------------------------
class ExactDedupeConfig(StrictModel):
    """Same content: a hash of the decoded pixels (a re-encoded or renamed copy of the same pixels matches), of the
    decoded audio samples, and of the normalised text (NFKC, case-folded, punctuation and spacing collapsed)."""

    enabled: bool = True
    image: bool = True
    audio: bool = True
    # off by default: on image-text pairs one caption under different images ("a red circle") is no duplicate
    text: bool = False


class PerceptualDedupeConfig(StrictModel):
    """Images whose 64-bit perceptual hashes (imagehash pHash) are within ``radius`` bits, found by pigeonhole
    bands: ``radius + 1`` bands of the 64 bits, so any pair within the radius agrees on a whole band. A band is
    64 / (radius + 1) bits wide, so buckets, and candidate pairs, grow as n² / 2^width: keep the radius small on
    large runs (README: Dedupe)."""

    enabled: bool = True
    radius: int = Field(8, ge=0, le=31, description="Hamming distance in bits, inclusive")
    # A 64-bit pHash sees a 32x32 grey image: flat scenes of one blob on a plain ground hash alike whatever their
    # colours. A pair within the radius must also look alike as tiny colour images (Torralba's 80 Million Tiny
    # Images test): the RMS difference of 16x16 RGB thumbnails, the smallest over centre crops of either image of
    # up to ``max_crop`` per side (so a cropped copy lines up with its original). None: the hash alone decides.
    max_thumbnail_rms: float | None = Field(6.0, gt=0, description="0-255 pixel scale")
    max_crop: float = Field(0.08, ge=0, lt=0.5, description="per side, fraction of the width and height")


class SemanticDedupeConfig(StrictModel):
    """SemDeDup over the ``embedding`` column (``clip_score`` with ``embedding: true``): k-means (faiss) on a sample
    of the embeddings, then, within each cluster, pairs whose cosine similarity exceeds ``1 - eps``."""

    enabled: bool = False
    eps: float = Field(0.05, gt=0, lt=1)
    clusters: int | None = Field(None, ge=1, description="k-means clusters; None: about sqrt(records)")
    sample: int = Field(100_000, ge=1, description="embeddings k-means trains on (chosen by a hash of the key)")
    iterations: int = Field(20, ge=1)
    seed: int = 0


class TextDedupeConfig(StrictModel):
    """Near-duplicate texts (the chosen caption or transcript, ``text``): MinHash (datasketch) of the normalised
    text's shingles, LSH bands chosen by datasketch for ``threshold``, candidates verified by their estimated
    Jaccard similarity. Off by default for the reason exact text is."""

    enabled: bool = False
    threshold: float = Field(0.8, gt=0, le=1, description="Jaccard similarity, inclusive")
    num_perm: int = Field(128, ge=16, le=1024)
    # datasketch picks the bands minimising (1 - w) x false positives + w x false negatives: with w = 0.8 and
    # the other defaults (12 bands of 10 slots), a pair of Jaccard 0.9 shares a band 99.4 % of the time, one at
    # the threshold 74 %, one of Jaccard 0.5 1.2 % (then verified away); w = 0.5 gives 93 %, 40 %, 0.1 %
    false_negative_weight: float = Field(0.8, gt=0, lt=1)
    shingle: Literal["char", "word"] = "char"
    ngram: int = Field(5, ge=1, le=32)
    seed: int = 1


class SurvivorRule(StrictModel):
    """Which member of a duplicate group is kept: with ``people_first``, one a person labelled "match" (the labels
    stage's ``human_match``); then the highest ``score`` (the largest of the record's scores whose names match
    this fnmatch pattern: any CLIP score by default; unscored records rank below scored ones), then the larger
    resolution (image pixels, else audio samples) when ``resolution``, then the smallest key."""

    people_first: bool = True
    score: str | None = "clip_score.*_text"
    resolution: bool = True


class SemanticEvalConfig(StrictModel):
    """Eval images embedded once, on the driver, by ``model``, which must be the model whose image embeddings the
    records carry (the ``clip_score`` stage with ``embedding: true`` before the dedupe; the workflow check refuses
    any other); a sample whose embedding has cosine similarity >= ``1 - eps`` with an eval image's copies it
    semantically (a flipped, cropped, recoloured copy that pHash misses)."""

    model: ClipModelSpec
    # SemDeDup's eps, as semantic dedupe's default: a tighter cut than dedupe's needs would drop fewer copies
    eps: float = Field(0.05, gt=0, lt=1, description="cosine similarity >= 1 - eps is a match")
    batch_size: int = Field(64, ge=1, description="eval images per forward pass")
    # a guard against an eps too loose for the model: more semantic eval matches than this fraction of the run's
    # records fails the stage (a real eval set is copied by a handful of records, not by a tenth of the run)
    max_fraction: float | None = Field(0.01, gt=0, le=1, description="None: no guard")

    @model_validator(mode="after")
    def _runs_on_a_cpu(self) -> SemanticEvalConfig:
        # the driver embeds on its CPU, where autocast runs bf16, never fp16
        if self.model.precision == "fp16":
            raise ValueError("decontaminate.semantic.model.precision fp16 needs a GPU; the eval set is embedded on "
                             "the driver's CPU: use fp32 or bf16")
        return self


class EvalSetConfig(StrictModel):
    """An evaluation set no sample may copy: WebDataset ``shards`` (paths or globs; their images), a folder of
    ``images`` (searched recursively), a ``texts`` file (one item per line). A sample matching an eval item
    exactly (pixels, or normalised text), perceptually (pHash within ``radius``), semantically (with ``semantic``:
    its embedding against the eval images' under the same model) or, for texts, by MinHash Jaccard >=
    ``text_threshold`` is ``eval_contamination``, naming the item."""

    shards: tuple[str, ...] = ()
    images: str | None = None
    texts: str | None = None
    exact: bool = True
    perceptual: bool = True
    radius: int = Field(8, ge=0, le=31)
    text_threshold: float | None = Field(0.8, gt=0, le=1, description="None: exact text only")
    semantic: SemanticEvalConfig | None = None  # off by default: it needs the records' embeddings

    @field_validator("shards")
    @classmethod
    def _shards_are_local(cls, shards: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(_local_path(path) for path in shards)

    @field_validator("images", "texts")
    @classmethod
    def _is_local(cls, path: str | None) -> str | None:
        return None if path is None else _local_path(path)

    @model_validator(mode="after")
    def _has_items(self) -> EvalSetConfig:
        if not (self.shards or self.images or self.texts):
            raise ValueError("decontaminate needs at least one of shards, images, texts")
        if self.semantic is not None and not (self.shards or self.images):
            raise ValueError("decontaminate.semantic embeds eval images: give shards or images")
        return self

    def files(self) -> tuple[str, ...]:
        """Every file the eval set reads, sorted: the shards' globs and the image folder expanded now."""
        import glob
        from pathlib import Path

        found = [p for pattern in self.shards for p in sorted(glob.glob(pattern)) or [pattern]]
        if self.images is not None:
            found += [str(p) for p in sorted(Path(self.images).rglob("*")) if p.is_file()]
        if self.texts is not None:
            found.append(self.texts)
        return tuple(found)


class DedupeConfig(StageConfig):
    """Drop copies, keeping one survivor per group (``survivor``), in this order: ``decontaminate`` (every sample
    matching the eval set), then ``exact``, ``perceptual``, ``semantic``, ``text``, each over what the ones before
    kept. Each drop's detail names the method, the survivor's (or eval item's) key and the distance."""

    exact: ExactDedupeConfig = ExactDedupeConfig()
    perceptual: PerceptualDedupeConfig = PerceptualDedupeConfig()
    semantic: SemanticDedupeConfig = SemanticDedupeConfig()
    text: TextDedupeConfig = TextDedupeConfig()
    survivor: SurvivorRule = SurvivorRule()
    decontaminate: EvalSetConfig | None = None
    partitions: int = Field(64, ge=1, le=4096, description="groups of the candidate-pair and component shuffles")

    def input_files(self) -> tuple[str, ...]:
        if self.decontaminate is None:
            return ()
        semantic = self.decontaminate.semantic
        # the eval embeddings are the model's: new weights, new embeddings, a new fingerprint
        return self.decontaminate.files() + (semantic.model.weight_files() if semantic is not None else ())

    def outside_run_dir(self) -> dict[str, str]:
        eval_set = self.decontaminate
        if eval_set is None:
            return {}
        found = {f"decontaminate.shards[{i}]": pattern for i, pattern in enumerate(eval_set.shards)}
        found |= {f"decontaminate.{name}": path for name in ("images", "texts")
                  if (path := getattr(eval_set, name)) is not None}
        return found

    def _eval_semantic(self) -> SemanticEvalConfig | None:
        return self.decontaminate.semantic if self.decontaminate is not None else None

    def columns_needed(self) -> frozenset[str]:
        wanted = self.semantic.enabled or self._eval_semantic() is not None
        return frozenset({"embedding"}) if wanted else frozenset()

    def origins_needed(self) -> dict[str, str]:
        semantic = self._eval_semantic()
        return {"embedding": semantic.model.identity()} if semantic is not None else {}


register("dedupe", config=DedupeConfig, role="global", implementation="mmcurate.stages.dedupe.stage:DedupeStage",
         requires=frozenset({"aligned"}))


# ---- privacy -----------------------------------------------------------------------------------------------------
PiiOperator = Literal["replace", "mask", "hash", "drop"]
PiiTextField = Literal["caption", "alt", "title", "figcaption", "transcript", "text"]


class PiiEntityConfig(StrictModel):
    """What the ``pii`` stage does about one entity type (a Presidio entity name).

    ``operator``: ``replace`` writes ``<TYPE>``, ``mask`` overwrites every character with ``*``, ``hash`` writes
    the salted sha256 of the value (salt: the environment variable the stage's ``salt_env`` names), ``drop``
    rejects the whole sample with reason ``pii``. A finding counts when its score is at least ``min_score`` (and,
    with ``context_required``, one of the ``context`` words, a lower-case prefix match, stands within the stage's
    ``context_window`` words of it), or when it has a context word and a score of at least
    ``context_min_score``. One that follows a ``not_after`` word (one of the two words before it: version and
    order numbers that parse as IP addresses or phones) does not count."""

    operator: PiiOperator = "replace"
    min_score: float = Field(0.3, ge=0, le=1)
    context: tuple[str, ...] = ()
    context_required: bool = False
    context_min_score: float = Field(0.0, ge=0, le=1)
    not_after: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _context_given(self) -> PiiEntityConfig:
        if self.context_required and not self.context:
            raise ValueError("context_required needs context words")
        return self


_NUMBER_WORDS = ("version", "ver", "v", "build", "release", "firmware", "rev", "order", "invoice", "ref", "lot",
                 "item", "isbn", "sku", "serial")


def _default_pii_entities() -> dict[str, PiiEntityConfig]:
    # Chosen on tests/pii/captions.py's labelled set (tests/pii/test_pii_precision.py prints the measurements):
    # the formats that validate themselves (Luhn, mod-97, libphonenumber, address parsing, SSA rules) need no
    # context; the weak numeric patterns (bare 9-digit SSNs, dates, licence, bank and passport numbers) rewrote
    # clean captions without one, and find nothing personal in a caption without one either.
    def weak(*words: str) -> PiiEntityConfig:
        return PiiEntityConfig(min_score=0.0, context=words, context_required=True)

    return {
        "EMAIL_ADDRESS": PiiEntityConfig(),
        "PHONE_NUMBER": PiiEntityConfig(not_after=_NUMBER_WORDS),
        "CREDIT_CARD": PiiEntityConfig(),
        "IBAN_CODE": PiiEntityConfig(),
        "IP_ADDRESS": PiiEntityConfig(not_after=_NUMBER_WORDS),
        "US_SSN": PiiEntityConfig(min_score=0.5, context=("ssn", "social", "security"), context_min_score=0.05),
        "DATE_TIME": weak("born", "birth", "birthday", "dob", "d.o.b"),
        "US_DRIVER_LICENSE": weak("driver", "licence", "license", "dl", "lic"),
        "US_BANK_NUMBER": weak("account", "acct", "bank", "routing"),
        "US_PASSPORT": weak("passport"),
    }


FrontalCascade = Literal["haarcascade_frontalface_alt.xml", "haarcascade_frontalface_alt2.xml",
                         "haarcascade_frontalface_default.xml"]


class FacesConfig(StrictModel):
    """Faces blurred in every image (OpenCV's shipped Haar cascades, ``cv2.data``): each box grown by ``margin``
    of its size on every side, then blurred until the same detector finds nothing there. Each cascade has its own
    scale step: the frontal ``alt2`` one finds the demo's astronaut at 1.1 down to 128 px and fires on none of its
    other photos at 256 px (``default`` at 1.05 found a second face in the astronaut's photo and two on the coins,
    and took 1.7x as long); the profile one finds the cameraman only at 1.05."""

    enabled: bool = True
    margin: float = Field(0.25, ge=0, le=2)
    min_size: int = Field(20, ge=8, description="smallest face side searched, pixels")
    frontal: FrontalCascade = "haarcascade_frontalface_alt2.xml"
    frontal_scale_factor: float = Field(1.1, gt=1, le=2)
    min_neighbors: int = Field(5, ge=1)
    profile: bool = True  # also the profile cascade (both directions)
    profile_scale_factor: float = Field(1.05, gt=1, le=2)  # 1.06 missed the cameraman at 256 px
    # what the detector found in an image (by the image's SHA-256, this detector's settings and OpenCV's version)
    # is kept in MMCURATE_CACHE_DIR/faces.sqlite3: a re-run (a label changed a caption upstream) re-blurs from the
    # kept boxes instead of searching again; the output bytes are the same either way
    cache: bool = True


class PiiConfig(StageConfig):
    """Personal data out of every text field (``entities``: given entries change or add to the defaults, ``null``
    removes one) (Presidio's recognizers over a blank spaCy pipeline, or the installed
    spaCy model ``ner_model`` names), faces blurred in images. Per sample the entity types found and their counts
    go in the ``pii`` column; the original text never leaves the stage."""

    entities: dict[str, PiiEntityConfig] = Field(default_factory=_default_pii_entities)
    fields: tuple[PiiTextField, ...] = ("caption", "alt", "title", "figcaption", "transcript", "text")
    # URLs are provenance; an address with an e-mail in its query string is redacted when this is on
    urls: bool = False
    context_window: int = Field(4, ge=1, le=50, description="words either side a context word may stand in")
    # regular expressions of harmless look-alikes: a finding inside a match of one of them is not one
    allow_list: tuple[str, ...] = (r"\bISBN(?:-1[03])?:?\s*(?:97[89][- ]?)?[0-9][0-9 -]{8,15}[0-9Xx]\b",)
    phone_regions: tuple[str, ...] = ("US", "GB", "DE", "FR", "CA")
    # an installed spaCy pipeline (a package name or a path): adds PERSON, LOCATION, NRP, ... to what can be found
    # (give them in ``entities``); None: a blank pipeline, which finds no names
    ner_model: str | None = None
    language: str = "en"
    salt_env: str = Field("MMCURATE_PII_SALT", description="environment variable holding the hash operator's salt")
    faces: FacesConfig = FacesConfig()
    batch_size: int = Field(256, ge=1, description="records per batch (texts analysed together)")

    @field_validator("entities", mode="before")
    @classmethod
    def _over_the_defaults(cls, given: object) -> object:
        # a workflow naming one entity changes that one: the defaults stay (forgetting them would let the
        # rest through); null removes an entity
        if not isinstance(given, dict):
            return given
        merged: dict[str, object] = dict(_default_pii_entities())
        for name, rule in given.items():
            if rule is None:
                merged.pop(name, None)
            else:
                merged[name] = rule
        return merged

    @field_validator("allow_list")
    @classmethod
    def _patterns_compile(cls, patterns: tuple[str, ...]) -> tuple[str, ...]:
        import re

        for pattern in patterns:
            try:
                re.compile(pattern)
            except re.error as err:
                raise ValueError(f"allow_list: {pattern!r} is not a regular expression: {err}") from None
        return patterns

    @model_validator(mode="after")
    def _salt_for_hashing(self) -> PiiConfig:
        # checked where the workflow loads (the driver; local Ray workers inherit its environment), not on the
        # first batch of a worker
        import os

        hashed = sorted(e for e, rule in self.entities.items() if rule.operator == "hash")
        if hashed and len(os.environ.get(self.salt_env, "").encode()) < 16:
            raise ValueError(f"{', '.join(hashed)} hashed: set a per-run salt of at least 16 bytes in the "
                             f"environment variable {self.salt_env} (it is never written to the run directory)")
        return self

    def decision_fields(self) -> dict[str, object]:
        dumped = self.model_dump(mode="json")
        return {name: dumped[name] for name in ("entities", "ner_model", "faces")}


class BlocklistConfig(StageConfig):
    """Drop samples whose media is on a blocklist (reason ``blocklist``): ``sha256`` lists of the media bytes (one
    hex digest a line) and ``phash`` lists of 64-bit perceptual hashes of images (imagehash pHash, 16 hex digits a
    line, matched within ``phash_radius`` bits). Each entry is a local file or an http(s) URL; ``#`` starts a
    comment."""

    sha256: tuple[str, ...] = ()
    phash: tuple[str, ...] = ()
    phash_radius: int = Field(4, ge=0, le=16)
    batch_size: int = Field(64, ge=1)
    max_list_bytes: int = Field(200_000_000, ge=1, description="a list (file or download) larger than this fails")

    @model_validator(mode="after")
    def _has_lists(self) -> BlocklistConfig:
        if not (self.sha256 or self.phash):
            raise ValueError("blocklist needs at least one of sha256, phash")
        return self

    def input_files(self) -> tuple[str, ...]:
        return tuple(p for p in (*self.sha256, *self.phash) if "://" not in p)


register("pii", config=PiiConfig, role="map", implementation="mmcurate.stages.pii.stage:PiiStage",
         requires=frozenset({"aligned"}), provides=frozenset({"pii_redacted"}), adds_columns=frozenset({"pii"}))
# after the crawl: sha256 lists name the bytes as published (align re-encodes); pHash survives re-encoding
register("blocklist", config=BlocklistConfig, role="map",
         implementation="mmcurate.stages.pii.blocklist:BlocklistStage", requires=frozenset({"raw_media"}))
