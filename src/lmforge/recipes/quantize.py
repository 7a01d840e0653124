"""lmforge quantize: a model's linear layers in int8 or bf16, written as a checkpoint every inference verb loads,
with an optional report of what it costs in quality against the fp32 model."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from lmforge.atomic import check_output_dir, write_text_atomic
from lmforge.checkpoint.files import PREFIX, find_latest, save_checkpoint
from lmforge.checkpoint.hub import resolve
from lmforge.checkpoint.loader import load
from lmforge.checkpoint.lock import run_lock
from lmforge.errors import LmforgeError
from lmforge.generation.chat import TEMPLATE_FILE, read_template
from lmforge.inference.embed import read_texts
from lmforge.inference.quality import compare_quality
from lmforge.kernels.calibration import BUILT_IN, built_in_texts, text_maxima
from lmforge.kernels.quantize import Quantization, check_dtype, quantize_model

REPORT = "quantization-report.json"
MAX_CALIBRATION = 512  # calibration texts read at most; a few hundred settle the channel maxima


@dataclasses.dataclass
class Quantized:
    checkpoint: Path  # OUT/step-NNNNNN
    report: dict | None  # compare_quality's scores, when data was given
    quantization: Quantization

    @property
    def summary(self) -> str:
        """The dtype, and what smoothed the layers: "int8, 24 layers smoothed on lmforge's built-in texts"."""
        q = self.quantization
        if not q.smoothed:
            return q.dtype
        on = "lmforge's built-in texts" if q.calibration == BUILT_IN else q.calibration
        return f"{q.dtype}, {len(q.smoothed)} layers smoothed on {on}"


def quantize(
    source: str | Path,
    out: str | Path,
    dtype: str,
    keep_fp32: list[str] | None = None,
    embeddings: bool = False,
    report_data: str | Path | None = None,
    allow_pickle: bool = False,
    calibrate: str | Path | None = None,
    alpha: float = 0.5,
    smooth: bool = True,
) -> Quantized:
    """Writes source (an lmforge checkpoint, a Hugging Face directory or a packaged model) quantized to dtype as an
    lmforge checkpoint in out (OUT/step-NNNNNN and OUT/latest, atomically), keeping the task, tokenizer and chat
    template; with report_data, scores fp32 and the quantized model there and writes OUT/quantization-report.json.
    int8 layers are smoothed (SmoothQuant, exponent alpha; lmforge.kernels.int8) by their activations on calibrate
    (a text file, one text per line), or on lmforge's built-in texts (lmforge.kernels.calibration); smooth=False
    leaves them as they are."""
    if dtype == "fp32":
        raise LmforgeError("--dtype fp32 is what the model is already: give int8 or bf16")
    if calibrate is not None and dtype != "int8":
        raise LmforgeError("--calibrate smooths int8 layers: use it with --dtype int8")
    if calibrate is not None and not smooth:
        raise LmforgeError("--calibrate and --no-calibrate contradict each other: give one of them")
    check_dtype(dtype)
    check_output_dir(out, {"the model": source, "--report": report_data, "--calibrate": calibrate})
    if report_data is not None and not Path(report_data).is_file():
        raise LmforgeError(f"--report {report_data} not found: give a text or labelled data file")
    q = Quantization(dtype, keep_fp32 or [], embeddings, alpha)
    texts = None
    if dtype == "int8" and smooth:
        texts = read_texts(calibrate)[:MAX_CALIBRATION] if calibrate is not None else built_in_texts()
        q.calibration = str(calibrate) if calibrate is not None else BUILT_IN
    with run_lock(out):
        if find_latest(out) is not None:
            raise LmforgeError(f"{out} already holds a checkpoint: give a new --out for the quantized model")
        loaded = load(source, allow_pickle=allow_pickle)
        if loaded.dtype != "fp32":
            raise LmforgeError(f"{loaded.path} is already quantized ({loaded.dtype}): quantize its fp32 model instead")
        fp32 = load(source, allow_pickle=allow_pickle) if report_data is not None else None
        input_max = text_maxima(loaded.model, loaded.tokenizer, texts) if texts is not None else None
        quantize_model(loaded.model, q, input_max=input_max)
        loaded.dtype = dtype
        extra = {"quantization": q.to_dict()}
        if loaded.task is not None:
            extra = {"task": dataclasses.asdict(loaded.task), **extra}
        report = None
        if fp32 is not None:  # before anything is written: data the report cannot read leaves no checkpoint behind
            report = {"model": str(source), "data": str(report_data), "quantization": q.to_dict()}
            report |= compare_quality(fp32, loaded, report_data)
        template = read_template(loaded.path or resolve(source))
        loaded.config.train.out = str(out)
        files = {TEMPLATE_FILE: template} if template is not None else None
        checkpoint = save_checkpoint(
            out, _step_of(loaded.path), loaded.model, loaded.config, loaded.tokenizer, extra=extra, files=files
        )
        if report is not None:
            write_text_atomic(Path(out) / REPORT, json.dumps(report, indent=2) + "\n")
    return Quantized(checkpoint, report, q)


def _step_of(path: Path | None) -> int:
    """The training step a checkpoint directory is named for (0 for a Hugging Face or packaged model)."""
    name = path.name if path is not None else ""
    return int(name.removeprefix(PREFIX)) if name.startswith(PREFIX) and name[len(PREFIX) :].isdigit() else 0
