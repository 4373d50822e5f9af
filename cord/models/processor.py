"""``AudioTextProcessor``: a tokenizer, a feature extractor and a chat template, nothing more.

What an adapter needs from a processor to build audio and text prompts. The Omni families load
this instead of their full processors (whose image and video processors CORD never uses, and
which need torchvision), and tiny test models save and load it like a processor.
"""

from __future__ import annotations

import json
from pathlib import Path

CHAT_TEMPLATE_FILE = "chat_template.jinja"


class AudioTextProcessor:
    """``tokenizer`` + ``feature_extractor`` + ``chat_template`` (a Jinja string)."""

    def __init__(self, tokenizer, feature_extractor, chat_template: str | None = None):
        self.tokenizer = tokenizer
        self.feature_extractor = feature_extractor
        self.chat_template = chat_template or getattr(tokenizer, "chat_template", None)
        if not self.chat_template:
            raise ValueError("the checkpoint has no chat template (chat_template.jinja, "
                             "chat_template.json or the tokenizer's)")

    def apply_chat_template(self, messages, **kwargs):
        return self.tokenizer.apply_chat_template(messages, chat_template=self.chat_template,
                                                  **kwargs)

    def save_pretrained(self, path: str | Path) -> None:
        path = Path(path)
        self.tokenizer.save_pretrained(path)
        self.feature_extractor.save_pretrained(path)
        (path / CHAT_TEMPLATE_FILE).write_text(self.chat_template)

    @classmethod
    def from_pretrained(cls, path: str | Path) -> AudioTextProcessor:
        from transformers import AutoFeatureExtractor, AutoTokenizer  # local: start-up cost

        path = Path(path)
        template = None
        if (path / CHAT_TEMPLATE_FILE).is_file():
            template = (path / CHAT_TEMPLATE_FILE).read_text()
        elif (path / "chat_template.json").is_file():
            template = json.loads((path / "chat_template.json").read_text())["chat_template"]
        return cls(AutoTokenizer.from_pretrained(path, local_files_only=True),
                   AutoFeatureExtractor.from_pretrained(path, local_files_only=True), template)
