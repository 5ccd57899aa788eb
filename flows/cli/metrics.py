"""``distill metrics``: prepare the real-domain metric networks."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from flows.cli.common import console, fail
from pipeline.errors import TwostepError

app = typer.Typer(help="Real-domain metric networks (FID/KID, CLIP score).",
                  no_args_is_help=True)


@app.command("convert-inception")
def convert_inception(
    source: Annotated[Path, typer.Argument(help="Published FID Inception checkpoint, e.g. "
                                           "pytorch-fid's pt_inception-2015-12-05-6726825d.pth.")],
    target: Annotated[Path, typer.Argument(help="safetensors file to write (the value of "
                                           "evaluate.real_metrics.fid.weights).")],
) -> None:
    """Convert the FID Inception weights to safetensors, once, for the FID/KID plugin.

    The checkpoint is read with torch.load(weights_only=True) (tensors only, no code runs)
    and checked against the architecture before the file is written."""
    from pipeline.evaluation.inception import convert_fid_weights
    from pipeline.store import unwritable_folder

    if target.is_dir():
        fail(f"{target}: is a folder; give the file to write, e.g. "
             f"{target / 'inception-2015-12-05.safetensors'}")
    if problem := unwritable_folder(target.parent):
        fail(f"{target}: its folder {target.parent} {problem}")
    try:
        count = convert_fid_weights(source, target)
    except TwostepError as exc:
        fail(exc)
    console.print(f"wrote {count} tensors to {target}")
