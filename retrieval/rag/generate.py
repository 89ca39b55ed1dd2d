"""Generators for the RAG loop: retrieve, build a prompt, generate.

A generator is any callable ``generator(prompt: str) -> str``. Two are provided:

- :class:`ExtractiveAnswerer` is **not a language model**: it returns the context sentence
  that best matches the question, with its citation. It needs no weights, so examples and
  tests run offline end to end.
- :class:`TransformersGenerator` wraps a ``transformers`` text-generation pipeline loaded
  from a local model directory.

:func:`answer` runs the loop with a :class:`~retrieval.rag.component.RetrievalComponent`.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from retrieval._optional import require
from retrieval.errors import ConfigError
from retrieval.rag.component import DEFAULT_PROMPT, Context, build_prompt

if TYPE_CHECKING:
    from retrieval.rag.component import RetrievalComponent

__all__ = ["ExtractiveAnswerer", "RAGAnswer", "TransformersGenerator", "answer"]

_WORD = re.compile(r"\w+")
_BLOCK = re.compile(r"(?m)^\[(\d+)\] ")
# A sentence ends at . ! or ? before whitespace, or at a blank line (titles, headings, paragraphs).
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n\s*\n")
# Function words carry no evidence of an answer; without this list "the" and "of" dominate overlaps.
_STOP = frozenset(
    "a an and are as at be by can do does for from has have how in is it its of on or that the this to was "
    "were what when where which who why will with not no".split()
)
NO_ANSWER = "No passage in the retrieved context answers the question."


def _words(text: str) -> set[str]:
    return {w for w in _WORD.findall(text.lower()) if w not in _STOP}


class ExtractiveAnswerer:
    """Answer with the best-matching sentence of the context, cited as ``[n]``. Not an LLM.

    Sentences of the numbered context passages are scored by the question words they
    contain, each weighted by its inverse frequency among the context's sentences (rarer
    words count more), divided by the square root of the sentence's word count (so long
    sentences do not win by size). The best sentence is returned with its passage number;
    ties go to the better-ranked passage.

    Call it with a prompt built by :func:`~retrieval.rag.component.build_prompt` (it reads the
    ``Context:`` and ``Question:`` parts), or use :meth:`answer` directly.

    Examples
    --------
    >>> prompt = "Context:\\n[1] Cats purr. Dogs bark loudly.\\n\\n[2] Cows moo.\\n\\nQuestion: Which animals bark?\\nAnswer:"
    >>> ExtractiveAnswerer()(prompt)
    'Dogs bark loudly. [1]'
    """

    def __repr__(self) -> str:
        return "ExtractiveAnswerer()  # best-matching context sentence, not a language model"

    def __call__(self, prompt: str) -> str:
        if not isinstance(prompt, str):
            raise ConfigError(f"prompt must be a str; got {type(prompt).__name__}.")
        q_at = prompt.rfind("Question:")
        c_at = prompt.find("Context:")
        if q_at < 0 or c_at < 0 or c_at > q_at:
            raise ConfigError(
                "ExtractiveAnswerer reads prompts with a 'Context:' section followed by a 'Question:' line "
                "(retrieval.rag.component.DEFAULT_PROMPT); this prompt has neither in that order."
            )
        question = prompt[q_at + len("Question:"):].split("\nAnswer:")[0].strip()
        return self.answer(question, prompt[c_at + len("Context:"):q_at])

    def answer(self, question: str, context: str | Context) -> str:
        """The best sentence of ``context`` (text with ``[n]`` blocks, or a Context) for ``question``."""
        text = context.text if isinstance(context, Context) else context
        parts = _BLOCK.split(text)
        sentences: list[tuple[int, str, set[str]]] = []
        for number, block in zip(parts[1::2], parts[2::2], strict=True):
            for sentence in _SENTENCE_END.split(block.strip()):
                if sentence.strip():
                    sentences.append((int(number), " ".join(sentence.split()), _words(sentence)))
        q = _words(question)
        if not sentences or not q:
            return NO_ANSWER
        df: dict[str, int] = {}
        for _, _, words in sentences:
            for w in words & q:
                df[w] = df.get(w, 0) + 1
        best, best_score = None, 0.0
        for number, sentence, words in sentences:
            shared = words & q
            if not shared:
                continue
            score = sum(math.log(1.0 + len(sentences) / df[w]) for w in shared) / math.sqrt(len(words))
            if score > best_score:
                best, best_score = (number, sentence), score
        if best is None:
            return NO_ANSWER
        return f"{best[1]} [{best[0]}]"


class TransformersGenerator:
    """A ``transformers`` text-generation pipeline from a local model directory, as a generator.

    Parameters
    ----------
    model : path-like
        Local directory with a causal language model and its tokenizer (nothing is downloaded).
    max_new_tokens : int
        Generation length.
    device : str
        ``"cpu"``, ``"cuda"``, ``"cuda:N"`` (passed to ``transformers.pipeline``).

    Examples
    --------
    >>> generate = TransformersGenerator("models/qwen2.5-0.5b-instruct")   # doctest: +SKIP
    >>> answer(component, "What lowers blood pressure?", generate).text   # doctest: +SKIP
    """

    def __init__(self, model: str | os.PathLike[str], *, max_new_tokens: int = 128, device: str = "cpu") -> None:
        if not Path(model).is_dir():
            raise ConfigError(f"model must be a local model directory; {os.fspath(model)!r} is not a directory.")
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be a positive integer; got {max_new_tokens!r}.")
        self.model = os.fspath(model)
        self.max_new_tokens = max_new_tokens
        self.device = device
        self._pipe: Any = None

    def __repr__(self) -> str:
        return f"TransformersGenerator(model={self.model!r}, max_new_tokens={self.max_new_tokens})"

    @property
    def pipeline(self) -> Any:
        if self._pipe is None:
            transformers = require("transformers", extra="cpu", feature="TransformersGenerator")
            self._pipe = transformers.pipeline("text-generation", model=self.model, device=self.device)
        return self._pipe

    @property
    def count_tokens(self) -> Callable[[str], int]:
        """Token counter of the model's tokenizer, for context budgets."""
        tokenizer = self.pipeline.tokenizer
        return lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])

    def __call__(self, prompt: str) -> str:
        out = self.pipeline(prompt, max_new_tokens=self.max_new_tokens, do_sample=False, return_full_text=False)
        return str(out[0]["generated_text"]).strip()


@dataclass(frozen=True)
class RAGAnswer:
    """The outcome of :func:`answer`: the generated text, the prompt and the cited context."""

    question: str
    text: str
    prompt: str
    context: Context


def answer(
    component: RetrievalComponent,
    question: str,
    generator: Callable[[str], str],
    *,
    k: int = 5,
    max_tokens: int = 1024,
    where: Mapping[str, Any] | None = None,
    prompt_template: str = DEFAULT_PROMPT,
) -> RAGAnswer:
    """Retrieve, build the prompt, generate: one RAG step.

    The context holds the best of ``k`` passages that fit in ``max_tokens`` (counted by the
    component's token counter). When the filters match nothing, the generator still gets
    the prompt, with an empty context.
    """
    if not callable(generator):
        raise ConfigError(f"generator must be a callable prompt -> str; got {type(generator).__name__}.")
    context = component.context(question, k, max_tokens=max_tokens, where=where)
    prompt = build_prompt(question, context, template=prompt_template)
    text = generator(prompt)
    if not isinstance(text, str):
        raise ConfigError(f"the generator must return a str; {generator!r} returned {type(text).__name__}.")
    return RAGAnswer(question=question, text=text, prompt=prompt, context=context)
