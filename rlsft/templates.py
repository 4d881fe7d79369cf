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
TEMPLATES = (*RAW_TEMPLATES, "chat")


def render_prompt(template: str, question: str, tokenizer=None) -> tuple[str, bool]:
    """The prompt text and whether the tokenizer should add its special tokens when encoding it."""
    if template in RAW_TEMPLATES:
        return RAW_TEMPLATES[template].replace("{q}", question), True
    if template == "chat":
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise RlsftError("template 'chat' needs a tokenizer with a chat template; pick another template")
        messages = [{"role": "user", "content": f"{question}\n{INSTRUCTION}"}]
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False), False
    raise RlsftError(f"unknown prompt template {template!r}; expected one of {list(TEMPLATES)}")


def encode_prompt(tokenizer, template: str, question: str) -> list[int]:
    text, add_special = render_prompt(template, question, tokenizer)
    return tokenizer(text, add_special_tokens=add_special)["input_ids"]
