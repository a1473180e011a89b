"""Turning a question into the text a model is prompted with."""

from __future__ import annotations

#: System message used with chat models: reason step by step, final answer in \boxed{}.
SYSTEM_PROMPT = (
    "You are a careful problem solver. Reason step by step, "
    "then give the final answer in \\boxed{}."
)


def format_prompt(question: str, tokenizer) -> str:
    """The prompt text for ``question``.

    With a chat tokenizer (``tokenizer.chat_template`` set): the chat template applied to a system
    message (:data:`SYSTEM_PROMPT`) and a user message with the question, ending with the
    assistant's generation prompt. Otherwise (plain models such as the tiny preset, or
    ``tokenizer=None``): ``"Question: {question}\\nAnswer:"``.
    """
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        messages = [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": question},
        ]
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return f"Question: {question}\nAnswer:"
