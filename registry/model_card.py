"""The model card of every pushed version (Mitchell et al. 2019, "Model Cards for Model Reporting"), in HTML,
Markdown and JSON, with the field names of Google's Model Card Toolkit schema (docs/registry.md#model-cards)."""
import os

from pipeline.config import Config

CARDS = "model_cards"
FILES = {"json": "model_card.json", "md": "model_card.md", "html": "model_card.html"}


def card_dir(config: Config, version: int | str) -> str:
    """Where the card of `version` lives: <output_root>/model_cards/<model_name>/<version>/ (beside the serving
    base path, never inside a version folder that TF Serving loads and the push fingerprints)."""
    return os.path.join(config.output_root, CARDS, config.model_name, str(version))


def card_path(config: Config, version: int | str, kind: str = "html") -> str | None:
    """The card's file of that kind (html, md, json), None when the version has no card."""
    path = os.path.join(card_dir(config, version), FILES[kind])
    return path if os.path.isfile(path) else None
