"""Runtime: the Python face of the C++ engine. `Runtime.load("model.gguf").generate("Once upon a time")`."""
from __future__ import annotations

import numbers
import os
import queue
import threading
import time
import weakref
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Union

import numpy as np

from ..tools.evaluate import text_metrics
from ..sampling import SamplingParams
from ..tokenizers.from_gguf import tokenizer_from_gguf
from ..tokenizers.text import check_text
from .engine import engine_module, check_cuda
from .slots import Slots, check_new_tokens, default_new_tokens
from .text_stream import _TextStream

GENERATE_TOKENS, CHAT_TOKENS = 128, 256  # the most new tokens max_new_tokens=None asks for (default_new_tokens)


def _count_arg(name: str, value, optional: bool = False, most: Optional[int] = None):
    """An integer argument of load() as a Python int (numpy integers too): TypeError for a bool, a float or a string,
    ValueError past `most` (the engine's own limit), which pybind11 otherwise refused with the engine's whole
    signature (a float, or past its C int) or took True as 1."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer{' or None' if optional else ''}, got {value!r}")
    if most is not None and value > most:
        raise ValueError(f"{name} must be at most {most}, got {value}")
    return int(value)


class RuntimeBusyError(RuntimeError):
    """This thread asked a Runtime for a generation while one of its own is still unfinished (an open stream, or a
    call from inside a token callback): waiting would wait for itself forever."""


class Runtime:
    """A loaded model file. Create with Runtime.load(path, threads=None, head="q4", device="cpu").

    One generation runs at a time: calls from several threads wait their turn; a thread that starts a second one
    while its own first is unfinished (say two interleaved streams) gets RuntimeBusyError instead of a hang.

    The KV cache the last generation left in sequence slot 0 is kept: a next prompt that starts with the same
    tokens (a chat's next turn) runs only the tokens after the shared prefix, with the same results as a cold
    cache (stats["cached_tokens"] counts the reused ones). slots() gives continuous batching over all the slots."""

    def __init__(self, engine, tokenizer, path: str):
        self._engine, self.tokenizer, self.path = engine, tokenizer, path
        self.stats: dict = {}
        self._turn = threading.Lock()
        # The thread whose generation holds _turn: the Thread object, not get_ident(), which a new thread reuses
        # once the old one ended (a stream left open by a finished thread made it RuntimeBusyError "this same thread").
        self._turn_holder: Optional[threading.Thread] = None
        # Weak: Slots holds the Runtime, so a strong link back was a cycle that kept the engine (its weights, KV
        # caches and worker threads) alive after `del rt` until the cyclic GC ran. _slots_used: slots() was called.
        self._slots_ref: Optional["weakref.ref[Slots]"] = None
        self._slots_used = False
        if tokenizer.vocab_size > engine.vocab_size:  # llama.cpp refuses such a file at load, as the importer does
            raise ValueError(f"{path}: the tokenizer has {tokenizer.vocab_size} tokens but the model's vocabulary is "
                             f"{engine.vocab_size} (token_embd rows): a prompt holding a token past it has no embedding")
        keys = set(engine.metadata_keys())
        # every id that ends generation: a model may have several (LLaMA-3: <|end_of_text|>, <|eot_id|>)
        eos = list(engine.metadata("bllama.eos_token_ids")) if "bllama.eos_token_ids" in keys else []
        if tokenizer.eos_id is not None and tokenizer.eos_id not in eos:
            eos.insert(0, tokenizer.eos_id)
        self.eos_ids = [int(i) for i in eos]

    @classmethod
    def load(cls, path: Union[str, os.PathLike], threads: Optional[int] = None, head: str = "q4",
             device: str = "cpu", max_sequences: int = 1, context_length: Optional[int] = None,
             kv_cache_dtype: str = "float16", tq1_layout: str = "auto") -> "Runtime":
        """head: "q4" (default) requantizes the LM head at load to 4 bits with an f16 scale per 32 columns, each
        block's scale searched for the least error weighted by the final norm's gain (0.28x the f16 head's bytes
        per decoded token; the shipped model's held-out perplexity -0.02% vs f16; on the GPU it runs as "q8");
        "q8" to int8 with one scale per row; "f16" runs the file's head as is, exactly (docs/engine.md,
        "LM head"). device: "cpu", or "cuda"
        for the GPU backend (weights stay packed on the GPU; logits and sampling stay there too).
        max_sequences: KV caches for that many sequences (CPU: at most 64), so generate([...]) decodes up to that
        many prompts together, one token of each per step: every weight is read once for all of them (on a
        2-core CPU, 4 sequences give 2.4x and 8 give 2.7x the tokens/s of one; docs/engine.md, "Batched decoding").
        context_length: None for the file's; a smaller value caps the KV cache (a file whose context does not fit in
        memory raises MemoryError saying so); a larger one is the file's too (the model never saw positions past
        it), and .context_length says what was used. kv_cache_dtype: "float16" (default: half the cache's bytes per token)
        or "float32" (exactly the model's function). tq1_layout: how TQ1_0 files are held on the CPU: "auto" (default)
        at 1.6 bits where decoding is faster so (AVX-512 VNNI with VBMI; prompts 5-8% slower), else 2 bits; "2bit"
        repacked to 2 bits (the faster prompt),
        "base3" at 1.6 bits; the
        logits are bit-identical either way (docs/engine.md, "Files", kernels/pack)."""
        if isinstance(path, (str, os.PathLike)) and not os.fspath(path):
            raise FileNotFoundError("model file not found: the path is empty")  # Path("") would be the current folder
        path = Path(path).expanduser()  # "~/models/x.gguf", as a shell would take it
        threads = _count_arg("threads", threads, optional=True)
        max_sequences = _count_arg("max_sequences", max_sequences, most=256)
        context_length = _count_arg("context_length", context_length, optional=True)
        if head not in ("f16", "q8", "q4"):
            raise ValueError(f"head must be 'f16', 'q8' or 'q4', got {head!r}")
        if device not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
        if device == "cuda":
            check_cuda()
        if not path.exists():
            from ..assets import shipped_model_hint

            raise FileNotFoundError(f"model file not found: {path}{shipped_model_hint(path)}")
        if threads is not None and threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        if context_length is not None and context_length < 1:
            raise ValueError(f"context_length must be a positive integer or None, got {context_length!r}")
        if kv_cache_dtype not in ("float32", "float16"):
            raise ValueError(f"kv_cache_dtype must be 'float32' or 'float16', got {kv_cache_dtype!r}")
        if tq1_layout not in ("auto", "2bit", "base3"):
            raise ValueError(f"tq1_layout must be 'auto', '2bit' or 'base3', got {tq1_layout!r}")
        options = dict(head=head, device=device, max_sequences=max_sequences, context_length=context_length,
                       kv_cache_dtype=kv_cache_dtype, tq1_layout=tq1_layout)
        if path.is_dir():
            if not (path / "config.json").exists():
                raise IsADirectoryError(f"{path} is a folder without config.json; give a .gguf file or a "
                                        "Hugging Face checkpoint folder")
            from ..convert.hf_import import load_hf_dir_engine  # converted on the fly into a temporary GGUF

            engine = load_hf_dir_engine(path, lambda p: engine_module().Engine(p, threads, **options))
            return cls(engine, tokenizer_from_gguf(engine), str(path))
        engine = engine_module().Engine(str(path), threads, **options)
        return cls(engine, tokenizer_from_gguf(engine), str(path))

    # ---- facts ------------------------------------------------------------------------------------------
    @property
    def config(self) -> dict:
        return dict(self._engine.config)

    @property
    def vocab_size(self) -> int:
        return self._engine.vocab_size

    @property
    def context_length(self) -> int:
        return self._engine.context_length

    def _stop_ids(self) -> List[int]:
        return list(self.eos_ids)

    def encode(self, prompt: str) -> List[int]:
        """The token ids generate() and stream() feed the engine for `prompt` (BOS included where the model uses
        one); TypeError / ValueError for a non-string or empty prompt."""
        if not isinstance(prompt, str):
            raise TypeError(f"prompt must be a string, got {type(prompt).__name__}")
        if not prompt:
            raise ValueError("the prompt is empty")
        return self.tokenizer.encode(check_text(prompt, "the prompt"))

    # ---- generation -------------------------------------------------------------------------------------
    @contextmanager
    def _engine_turn(self, slots: bool = False):
        """Holds the engine for one generation (a stream holds it from its first next() until it ends or closes), or
        for one call of Slots (slots=True). A one-shot generation while slots are taken raises RuntimeBusyError: it
        would overwrite their KV caches."""
        me = threading.current_thread()
        if self._turn_holder is me:
            raise RuntimeBusyError("this Runtime is busy with an unfinished generation of this same thread (an open "
                                   "stream, or a token callback calling back in): finish or close it first, or load "
                                   "another Runtime for concurrent generations")
        with self._turn:
            if not slots and self._slots_used:
                running = self._engine.slot_active()
                if running:
                    raise RuntimeBusyError(f"this Runtime's slots() hold {running} unfinished request(s): one-shot "
                                           "generation would overwrite their KV caches; add the request to the slots, "
                                           "or wait until they finish (or cancel them)")
            self._turn_holder = me
            try:
                yield
            finally:
                self._turn_holder = None

    def slots(self) -> Slots:
        """Continuous batching over the runtime's max_sequences slots (bllama/runtime/slots.py): add requests at
        any time, step() all of them one token at a time. The same object on every call while one is held."""
        s = self._slots_ref() if self._slots_ref is not None else None
        if s is None:  # none yet, or the last one was dropped (it holds no state of its own: the engine does)
            s = Slots(self)
            self._slots_ref, self._slots_used = weakref.ref(s), True
        return s

    def reset_cache(self) -> None:
        """Forgets every kept KV cache: the next generation runs its whole prompt (RuntimeBusyError while slots run)."""
        with self._engine_turn():
            self._engine.reset()

    # Every generating method takes `sampling` (a SamplingParams, default greedy) plus its fields as keyword
    # overrides, so rt.generate(p, do_sample=True, temperature=0.8, seed=0) keeps working; SamplingParams.of folds
    # them into one object.
    def _engine_kwargs(self, sampling: SamplingParams, stop_at_eos: bool) -> dict:
        """The engine's generate / generate_batch keyword arguments: the sampling fields and the stop ids."""
        return dict(sampling.engine_kwargs(), stop_ids=self._stop_ids() if stop_at_eos else [])

    def _run(self, prompt_ids, max_new_tokens, sampling: SamplingParams, callback, stop_at_eos=True):
        prompt_ids = list(prompt_ids)
        max_new_tokens = check_new_tokens(max_new_tokens, len(prompt_ids), self.context_length)
        ids = self._engine.generate(prompt_ids, max_new_tokens, callback=callback,
                                    **self._engine_kwargs(sampling, stop_at_eos))
        self.stats = dict(self._engine.last_stats)
        return ids

    def generate(self, prompt: Union[str, Sequence[str]], max_new_tokens: Optional[int] = None,
                 sampling: Optional[SamplingParams] = None, *, stop: Optional[Sequence[str]] = None,
                 stop_at_eos: bool = True, **overrides) -> Union[str, List[str]]:
        """The continuation of `prompt` (without the prompt); a list of prompts gives a list of continuations
        (decoded together when the runtime was loaded with max_sequences > 1; prompt i samples with seed + i, so
        equal prompts still get different samples, and each gets what generate(prompt_i, seed=seed + i) gives).
        Generation ends at max_new_tokens (None: up to 128, as many as the context holds after the prompt), at the
        model's EOS (unless stop_at_eos=False) or at a `stop` string."""
        sampling = SamplingParams.of(sampling, **overrides)
        if not isinstance(prompt, str):
            prompts = list(prompt)
            if self._engine.config.get("max_sequences", 1) > 1 and len(prompts) > 1:
                ids = [self.encode(p) for p in prompts]
                if max_new_tokens is None:
                    max_new_tokens = default_new_tokens(GENERATE_TOKENS, max(map(len, ids)), self.context_length)
                outs = self.generate_ids_batch(ids, max_new_tokens, sampling, stop_at_eos=stop_at_eos)
                return [self.text_of(prompt_ids, out, stop) for prompt_ids, out in zip(ids, outs)]
            return [self.generate(p, max_new_tokens, sampling.for_sequence(i), stop=stop, stop_at_eos=stop_at_eos)
                    for i, p in enumerate(prompts)]
        return "".join(self.stream(prompt, max_new_tokens, sampling, stop=stop, stop_at_eos=stop_at_eos))

    def generate_ids_batch(self, prompt_ids: Sequence[Sequence[int]], max_new_tokens: int,
                           sampling: Optional[SamplingParams] = None, *, stop_at_eos: bool = True, on_token=None,
                           **overrides) -> List[List[int]]:
        """The new token ids of each prompt (ids), decoded together in groups of max_sequences; prompt i samples
        with seed + i. A list ends at max_new_tokens or before an EOS id. on_token(i, token) runs for every
        returned token of prompt i (in the calling thread); truthy ends that sequence. text_stream() / text_of()
        turn ids into text."""
        prompts = [list(p) for p in prompt_ids]
        max_new_tokens = check_new_tokens(max_new_tokens, max(map(len, prompts), default=0), self.context_length)
        sampling = SamplingParams.of(sampling, **overrides)
        with self._engine_turn():
            outs = self._engine.generate_batch(prompts, max_new_tokens,
                                               callback=on_token, **self._engine_kwargs(sampling, stop_at_eos))
            self.stats = dict(self._engine.last_stats)
        return [list(o) for o in outs]

    def text_stream(self, prompt_ids: Sequence[int], stop: Optional[Sequence[str]] = None) -> "_TextStream":
        """The incremental detokenizer stream() uses: .push(token) -> new text, .flush() -> the rest,
        .stopped once a stop string ended the text."""
        return _TextStream(self.tokenizer, prompt_ids, stop)

    def text_of(self, prompt_ids: Sequence[int], ids: Sequence[int], stop: Optional[Sequence[str]] = None) -> str:
        """The text of new token ids after prompt_ids, cut before the first stop string, by stream()'s rules."""
        text = self.text_stream(prompt_ids, stop)
        for t in ids:
            text.push(t)
            if text.stopped:
                break
        text.flush()
        return text.emitted

    def stream(self, prompt: str, max_new_tokens: Optional[int] = None, sampling: Optional[SamplingParams] = None, *,
               stop: Optional[Sequence[str]] = None, stop_at_eos: bool = True, **overrides) -> Iterator[str]:
        """Yields the continuation's text as it is produced. The engine runs in a worker thread (GIL released)."""
        return self.stream_ids(self.encode(prompt), max_new_tokens, sampling, stop=stop, stop_at_eos=stop_at_eos,
                               **overrides)

    def stream_ids(self, prompt_ids: Sequence[int], max_new_tokens: Optional[int] = None,
                   sampling: Optional[SamplingParams] = None, *, stop: Optional[Sequence[str]] = None,
                   stop_at_eos: bool = True, **overrides) -> Iterator[str]:
        """stream() from token ids (encode() or chat_prompt_ids() give them): nothing runs until the first
        next(); closing the iterator stops the engine within a few tokens. max_new_tokens None: generate()'s."""
        if max_new_tokens is None:
            max_new_tokens = default_new_tokens(GENERATE_TOKENS, len(prompt_ids), self.context_length)
        sampling = SamplingParams.of(sampling, **overrides)
        text = _TextStream(self.tokenizer, prompt_ids, stop)
        # Bounded: the engine runs at most a few pieces ahead of the reader, so a reader that stops
        # (closes the generator) stops the engine too instead of letting it finish max_new_tokens.
        q: "queue.Queue" = queue.Queue(maxsize=4)
        cancelled = threading.Event()
        DONE = object()

        def put(item) -> None:
            while not cancelled.is_set():
                try:
                    q.put(item, timeout=0.05)
                    return
                except queue.Full:
                    continue

        def on_token(token: int) -> bool:
            delta = text.push(token)
            if delta:
                put(delta)
            return text.stopped or cancelled.is_set()  # True stops the engine

        def work():
            try:
                self._run(prompt_ids, max_new_tokens, sampling, on_token, stop_at_eos)
                rest = text.flush()
                if rest:
                    put(rest)
                put(DONE)
            except BaseException as e:  # handed to the consumer
                put(e)

        with self._engine_turn():  # taken by the reading thread: the worker generates on its behalf
            worker = threading.Thread(target=work, daemon=True)
            worker.start()
            try:
                while True:
                    item = q.get()
                    if item is DONE:
                        break
                    if isinstance(item, BaseException):
                        raise item
                    yield item
            finally:
                cancelled.set()
                worker.join()

    # ---- chat -------------------------------------------------------------------------------------------
    def chat_prompt_ids(self, messages, add_generation_prompt: bool = True) -> List[int]:
        """The token ids of `messages` ([{"role": ..., "content": ...}, ...]) rendered with the model file's chat
        template (tokenizer.chat_template, bllama/tokenizers/chat.py); ValueError when the file has none."""
        from ..tokenizers.chat import encode_chat

        template = getattr(self.tokenizer, "chat_template", None)
        if not template:
            raise ValueError(f"{self.path}: the model file has no chat template (tokenizer.chat_template)")
        # Contents are plain text; control tokens come only from the template's markup (BOS included: as the id).
        return encode_chat(self.tokenizer, template, messages, add_generation_prompt)

    def chat(self, messages, max_new_tokens: Optional[int] = None, sampling: Optional[SamplingParams] = None, *,
             stop: Optional[Sequence[str]] = None, stream: bool = False, **overrides) -> Union[str, Iterator[str]]:
        """The assistant's reply to `messages` under the file's chat template; ends at an end-of-turn / EOS id
        (every id in eos_ids), a `stop` string or max_new_tokens (None: up to 256, as many as the context holds
        after the prompt). stream=True yields the text as it comes."""
        ids = self.chat_prompt_ids(messages)
        if max_new_tokens is None:
            max_new_tokens = default_new_tokens(CHAT_TOKENS, len(ids), self.context_length)
        pieces = self.stream_ids(ids, max_new_tokens, sampling, stop=stop,
                                 stop_at_eos=True, **overrides)
        return pieces if stream else "".join(pieces)

    # ---- scoring ----------------------------------------------------------------------------------------
    def logits(self, token_ids: Sequence[int]) -> np.ndarray:
        """Logits [len(token_ids), vocab] (float32), each position seeing the tokens before it."""
        ids = [int(t) for t in token_ids]
        if not ids:
            raise ValueError("token_ids is empty")
        with self._engine_turn():
            t0 = time.perf_counter()
            out = np.asarray(self._engine.logits(ids))
            self.stats = self._scoring_stats(len(ids), time.perf_counter() - t0)
        return out

    def _scoring_stats(self, tokens: int, seconds: float) -> dict:
        """rt.stats after logits() / evaluate(): the tokens scored count as prompt tokens (one forward, no decode)."""
        stats = dict(self._engine.last_stats)
        stats.update(prompt_tokens=tokens, cached_tokens=0, prompt_seconds=seconds, decode_tokens=0,
                     decode_seconds=0.0, generated_tokens=0,
                     prompt_tokens_per_second=tokens / seconds if seconds > 0 else 0.0,
                     decode_tokens_per_second=0.0, stop_reason="none")
        return stats

    def evaluate(self, text: str, progress: bool = False) -> dict:
        """Perplexity, NLL per token and bits per character over `text` in context-length windows (progress: a bar
        on stderr, where that is a terminal)."""
        scored = {"tokens": 0, "seconds": 0.0}

        def logits_fn(ids):
            out = self.logits(ids)
            scored["tokens"] += self.stats["prompt_tokens"]
            scored["seconds"] += self.stats["prompt_seconds"]
            return out

        result = text_metrics(text, self.tokenizer, self.context_length, logits_fn, progress=progress)
        self.stats = self._scoring_stats(scored["tokens"], scored["seconds"])
        return result

    def perplexity(self, text: str) -> float:
        return self.evaluate(text)["perplexity"]

    def __repr__(self) -> str:
        c = self.config
        return f"Runtime({self.path!r}, {c.get('num_layers')} layers, hidden {c.get('hidden_size')})"
