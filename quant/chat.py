"""A model's chat template (``tokenizer.chat_template`` in GGUF metadata), rendered as
transformers' ``apply_chat_template`` renders it: Jinja in a sandbox, blocks trimmed, the
template's ``raise_exception`` and ``strftime_now`` helpers, BOS and EOS as strings."""

from __future__ import annotations

from datetime import datetime


class ChatTemplateError(ValueError):
    """A template that does not render (a Jinja error, or the template's own refusal)."""


class ChatTemplate:
    """One model's chat template: ``render(messages)`` is the prompt text it expects."""

    def __init__(self, source: str, bos_token: str = "", eos_token: str = ""):
        from jinja2 import TemplateError
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        def raise_exception(message: str):
            raise ChatTemplateError(f"the chat template refuses: {message}")

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals.update(raise_exception=raise_exception,
                           strftime_now=lambda fmt: datetime.now().strftime(fmt))
        try:
            self.template = env.from_string(source)
        except TemplateError as exc:
            raise ChatTemplateError(f"the chat template does not parse ({exc})") from None
        self.source, self.bos_token, self.eos_token = source, bos_token, eos_token

    def render(self, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        """The text of ``messages`` ({"role", "content"} each), ending with the assistant's
        turn opened when ``add_generation_prompt``."""
        from jinja2 import TemplateError

        try:
            return self.template.render(messages=messages, bos_token=self.bos_token,
                                        eos_token=self.eos_token,
                                        add_generation_prompt=add_generation_prompt)
        except TemplateError as exc:
            raise ChatTemplateError(f"the chat template does not render ({exc})") from None

    def user_prompt(self, text: str) -> str:
        """One user message, the assistant's turn opened."""
        return self.render([{"role": "user", "content": text}])
