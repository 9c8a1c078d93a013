"""``torch.export`` programs (``.pt2``): the graph PyTorch itself reloads with
``torch.export.load`` and runs, or hands to a compiler (AOTInductor, ExecuTorch), without this
library. The model card travels as the extra file ``davit_card.json`` inside the archive
(:func:`read_exported_program_card`)."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from ..checkpoint.card import CARD_KEY, ModelCard, card_from_metadata
from ..errors import CheckpointError
from .plan import SIGNATURE_KEY, ExportPlan, read_signature
from .verify import Runner, verify_export

SUFFIX = ".pt2"
CARD_FILE = "davit_card.json"
SIGNATURE_FILE = "davit_export.json"


def write_exported_program(plan: ExportPlan, path: Path, verify: bool = True, atol: float = 1e-4) -> Path:
    """Export ``plan`` to the ``.pt2`` archive ``path`` (written whole or not at all), reloaded
    and checked when ``verify``."""
    program = plan.program
    extra = {CARD_FILE: plan.card.to_json()} if plan.card is not None else {}
    extra[SIGNATURE_FILE] = plan.signature(atol if verify else None)
    path.parent.mkdir(parents=True, exist_ok=True)
    # written under its own name in a temporary folder beside it: the archive's folder inside is
    # named after the file, and torch.export wants the .pt2 suffix
    with tempfile.TemporaryDirectory(prefix=f".{path.stem}.", dir=path.parent) as folder:
        tmp = Path(folder) / path.name
        torch.export.save(program, tmp, extra_files=extra)
        if verify:
            verify_export(plan, exported_program_runner(tmp), "torch.export.load", atol)
        os.replace(tmp, path)
    return path


def exported_program_runner(path: Path) -> Runner:
    """The reloaded program as a function of its one input."""
    module = torch.export.load(path).module()

    def run(array: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return module(torch.from_numpy(array)).numpy()

    return run


def read_exported_program_card(path: str | Path) -> ModelCard | None:
    """The model card a ``.pt2`` archive carries (None for one exported without a card)."""
    card = load_exported_program(path)[1][CARD_FILE]
    return card_from_metadata({CARD_KEY: card} if card else {}, str(path))


def read_exported_program_signature(path: str | Path) -> dict | None:
    """What the archive takes and gives (:meth:`.plan.ExportPlan.signature`); None when it does not say."""
    text = load_exported_program(path)[1][SIGNATURE_FILE]
    return read_signature({SIGNATURE_KEY: text} if text else {}, str(path))


def load_exported_program(path: str | Path) -> tuple[torch.export.ExportedProgram, dict[str, str]]:
    """The program of a ``.pt2`` archive and its extra files (the card and the signature; empty
    strings for those it lacks)."""
    extra = {CARD_FILE: "", SIGNATURE_FILE: ""}
    try:
        program = torch.export.load(path, extra_files=extra)
    except Exception as error:
        raise CheckpointError(f"{path} is not a readable torch.export archive: {error}") from None
    return program, extra
