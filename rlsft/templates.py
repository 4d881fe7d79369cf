"""Prompt templates of method.md section 1, turned into the prompt token ids a model reads.

Raw-string templates are encoded with the tokenizer's special tokens (BOS where the model expects one);
``chat`` renders the tokenizer's own chat template, which already carries its special tokens.
"""

from __future__ import annotations

from .errors import RlsftError

INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."

RAW_TEMPLATES = {
    "deepseek_math": "User: {q}\n" + INSTRUCTION + "\n\nAssistant:",
    "mistral": "[INST] {q}[/INST]",
    "qwen25_math_cot": (
        "<|im_start|>system\n" + INSTRUCTION + "<|im_end|>\n<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n"
    ),
    "plain": "{q}",
}
# Chat templates: the tokenizer's own chat template around the question and an instruction.
# ``chat_brief`` asks for a one-sentence answer: small instruct models (SmolLM2-135M) ramble past any CPU-sized token
# budget under the step-by-step instruction, so an SFT stage and its RL-trained stage would answer at very different
# lengths and method.md 2.1's length filter would leave no question to attribute.
CHAT_INSTRUCTIONS = {
    "chat": INSTRUCTION,
    "chat_brief": "Answer in one sentence, and put your final answer within \\boxed{}.",
}
TEMPLATES = (*RAW_TEMPLATES, *CHAT_INSTRUCTIONS)


def render_prompt(template: str, question: str, tokenizer=None) -> tuple[str, bool]:
    """The prompt text and whether the tokenizer should add its special tokens when encoding it."""
    if template in RAW_TEMPLATES:
        return RAW_TEMPLATES[template].replace("{q}", question), True
    if template in CHAT_INSTRUCTIONS:
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise RlsftError(f"template {template!r} needs a tokenizer with a chat template; pick another template")
        messages = [{"role": "user", "content": f"{question}\n{CHAT_INSTRUCTIONS[template]}"}]
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False), False
    raise RlsftError(f"unknown prompt template {template!r}; expected one of {list(TEMPLATES)}")


def encode_prompt(tokenizer, template: str, question: str) -> list[int]:
    text, add_special = render_prompt(template, question, tokenizer)
    return tokenizer(text, add_special_tokens=add_special)["input_ids"]
