"""The chat model as a question writer for the reader's training groups (doc2query, InPars).

`model_writer(model)` gives a function sentence -> the model's reply, built from the
versioned `question` prompt: its worked examples go first as earlier turns of the chat, so a small
local model that cannot follow a bare instruction continues the pattern, and a model on a server
gets the same prompt. The sentence is library text, so it is untrusted: it goes in the user turn,
where the chat model neutralises control tokens (`cove.llm.neutralise_messages`), and the reply is
only ever read as a candidate question (`cove.reader.pairs.first_question`), never obeyed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from cove.prompts import Prompt, load_prompt_file

if TYPE_CHECKING:
    from cove.llm import ChatModel

MAX_QUESTION_TOKENS = 40
MAX_SENTENCE_CHARS = 400


def question_messages(prompt: Prompt, sentence: str) -> list[dict[str, str]]:
    """The few-shot chat: the instruction, each worked example as a user/assistant turn, then the sentence."""
    messages = [{"role": "system", "content": prompt.render("system")}]
    for example in prompt.examples:
        messages.append({"role": "user", "content": prompt.render("user", sentence=example["sentence"])})
        messages.append({"role": "assistant", "content": example["question"]})
    messages.append({"role": "user", "content": prompt.render("user", sentence=sentence[:MAX_SENTENCE_CHARS])})
    return messages


def model_writer(model: ChatModel, prompt: Prompt | None = None) -> Callable[[str], str]:
    """sentence -> the model's reply to the question-writing prompt."""
    prompt = prompt or load_prompt_file("question")

    def write(sentence: str) -> str:
        return model.chat(question_messages(prompt, sentence), max_tokens=MAX_QUESTION_TOKENS).text

    return write
