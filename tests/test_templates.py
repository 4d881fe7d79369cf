"""Prompt templates: the text each model reads, checked against hand-written expectations."""

import pytest

from rlsft.errors import RlsftError
from rlsft.models import build_tiny_tokenizer
from rlsft.templates import TEMPLATES, encode_prompt, render_prompt

Q = "What is 3 + 4?"


@pytest.fixture(scope="module")
def tok():
    return build_tiny_tokenizer()


def test_chat_templates_wrap_question_and_their_instruction_in_the_tokenizers_chat_format(tok):
    text, add_special = render_prompt("chat", Q, tok)
    assert text == ("<|user|>What is 3 + 4?\nPlease reason step by step, and put your final answer within "
                    "\\boxed{}.<|end|><|assistant|>")
    assert add_special is False  # the chat template already carries the special tokens
    brief, _ = render_prompt("chat_brief", Q, tok)
    assert brief == ("<|user|>What is 3 + 4?\nAnswer in one sentence, and put your final answer within "
                     "\\boxed{}.<|end|><|assistant|>")
    assert encode_prompt(tok, "chat_brief", Q) == tok(brief, add_special_tokens=False)["input_ids"]


def test_raw_templates_substitute_the_question_and_add_special_tokens(tok):
    assert render_prompt("plain", Q) == (Q, True)
    assert render_prompt("mistral", Q) == ("[INST] What is 3 + 4?[/INST]", True)
    assert render_prompt("deepseek_math", Q)[0].startswith("User: What is 3 + 4?\nPlease reason step by step")
    assert encode_prompt(tok, "plain", Q) == tok(Q, add_special_tokens=True)["input_ids"]
    assert set(TEMPLATES) >= {"chat", "chat_brief", "plain", "mistral", "deepseek_math", "qwen25_math_cot"}


def test_unknown_template_and_chat_without_chat_template_are_clear_errors(tok):
    with pytest.raises(RlsftError, match="unknown prompt template 'nope'"):
        render_prompt("nope", Q, tok)
    with pytest.raises(RlsftError, match="template 'chat_brief' needs a tokenizer with a chat template"):
        render_prompt("chat_brief", Q, None)
