"""A trained segmentor as a file that runs without this project: ONNX (ONNX Runtime) or TorchScript.

The exported graph is the evaluation-mode forward pass: no complementary dropout, no method branch
(``Segmentor.forward`` with ``comp_drop=False``). Its input is a normalised float32 batch (B, 3 x images,
H, W) whose H and W are any multiples of the encoder's size divisor; its output the logits (B, nclass,
H, W). Pre- and post-processing (:data:`PROCESSING`, also stored in the file) are the caller's, as
``unimatch predict`` does them: ImageNet mean/std, resize to the nearest multiple of the divisor,
logits resized back, arg-max.

Sizes stay dynamic through DINOv2's positional table, which the encoder resizes with a bicubic
``F.interpolate`` driven by a scale factor computed from the patch grid. Tracing records that factor as a
constant (and torch.export guards on it), so while exporting the same resampling runs as two small
interpolation matrices built from the grid sizes: the numbers stay those of the eager encoder (to float
rounding; checked by the tests) and the grid stays a graph input.

Exports use torch.jit.trace and the TorchScript-based ONNX exporter: on this project's models the
torch.export-based ONNX exporter was measured 1e-3 off the eager logits at sizes other than the traced
one, the TorchScript-based one 1e-6.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO
from unittest import mock

import numpy as np
import torch
from torch import nn

from ..engine.inference import size_divisor
from ..errors import ConfigError, UnimatchError
from ..models.encoders import dinov2
from ..models.weights import sha256_file
from ..utils.atomic import atomic_write, write_text_atomic
from ..utils.registry import Registry

METADATA_KEY = "unimatch"  # ONNX metadata_props key / TorchScript extra file holding the JSON metadata
TOLERANCE = 1e-4  # largest absolute logit difference an export may show against the eager model
OPSET = 18
PROCESSING = (
    "input: float32 (B, 3 x images, H, W), RGB scaled to [0, 1] then normalised with mean "
    "(0.485, 0.456, 0.406) and std (0.229, 0.224, 0.225), images of a pair stacked on channels; H and W "
    "multiples of size_divisor (unimatch predict resizes bilinearly, align_corners=True, to the nearest "
    "multiples and resizes the logits back); output: float32 (B, nclass, H, W) logits, label = arg-max "
    "over classes"
)
_CUBIC = -0.75  # PyTorch's (and ONNX Resize's) bicubic coefficient


class ExportError(UnimatchError, RuntimeError):
    """The model cannot be exported as asked, or the exported graph disagrees with the eager model."""


def _cubic_weights(offset: torch.Tensor) -> torch.Tensor:
    """Bicubic weights of the 4 source taps (-1, 0, 1, 2) of each fractional ``offset`` in [0, 1)."""

    def near(x: torch.Tensor) -> torch.Tensor:
        return ((_CUBIC + 2) * x - (_CUBIC + 3)) * x * x + 1

    def far(x: torch.Tensor) -> torch.Tensor:
        return ((_CUBIC * x - 5 * _CUBIC) * x + 8 * _CUBIC) * x - 4 * _CUBIC

    return torch.stack((far(offset + 1), near(offset), near(1 - offset), far(2 - offset)), dim=1)


def _position_matrix(grid: Any, side: int) -> torch.Tensor:
    """(grid, side) matrix of DINOv2's resampling of one axis: F.interpolate's bicubic sampling at scale
    (grid + 0.1) / side, borders clamped; the identity when the table is used as it is (grid == side on
    both axes, handled by the caller). ``grid`` may be a traced size."""
    target = torch.arange(grid, dtype=torch.float32)
    # As ATen: 1 / scale in double precision, then the sampling in float.
    step = (side / (torch.as_tensor(grid, dtype=torch.float64) + dinov2.INTERPOLATE_OFFSET)).float()
    source = step * (target + 0.5) - 0.5
    first = source.floor()
    taps = (first[:, None] + torch.arange(-1, 3, dtype=torch.float32)).clamp(0, side - 1)
    columns = torch.arange(side, dtype=torch.float32)
    return ((taps[:, :, None] == columns).float() * _cubic_weights(source - first)[:, :, None]).sum(dim=1)


def traceable_pos_embed(pos_embed: torch.Tensor, grid_h: Any, grid_w: Any) -> torch.Tensor:
    """:func:`unimatch.models.encoders.dinov2.interpolate_pos_embed` as tensor operations of the grid
    sizes, so that a traced or exported graph resizes the table for every input size."""
    side = int(math.sqrt(pos_embed.shape[1] - 1))
    dim = pos_embed.shape[-1]
    class_pos, table = pos_embed[:, :1].float(), pos_embed[0, 1:].float().reshape(side, side, dim)
    rows, cols = _position_matrix(grid_h, side), _position_matrix(grid_w, side)
    unchanged = (torch.as_tensor(grid_h) == side) & (torch.as_tensor(grid_w) == side)
    rows = torch.where(unchanged, (torch.arange(grid_h)[:, None] == torch.arange(side)).float(), rows)
    cols = torch.where(unchanged, (torch.arange(grid_w)[:, None] == torch.arange(side)).float(), cols)
    patches = torch.einsum("hi,ijd,wj->hwd", rows, table, cols).reshape(1, -1, dim)
    return torch.cat((class_pos, patches), dim=1).to(pos_embed.dtype)


@contextlib.contextmanager
def dynamic_sizes() -> Iterator[None]:
    """While exporting: DINOv2 encoders resize their positional table with :func:`traceable_pos_embed`,
    and the tracer's warnings about the model's input checks (constant for any valid input) are muted."""
    with mock.patch.object(dinov2, "interpolate_pos_embed", traceable_pos_embed), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.trace's deprecation notice
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript-based ONNX exporter's
        yield


Runner = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class ExportFormat:
    """How a format writes a traced model (``save``), runs the file it wrote (``load``) and reads back
    the metadata JSON stored in it (``metadata``)."""

    suffix: str
    save: Callable[[nn.Module, torch.Tensor, BinaryIO, bool, str], None]
    load: Callable[[Path], Runner]
    metadata: Callable[[Path], str]


FORMATS: Registry[ExportFormat] = Registry("export format")


def _save_onnx(model: nn.Module, example: torch.Tensor, file: BinaryIO, dynamic: bool, metadata: str) -> None:
    import onnx  # the optional extra "serve"

    axes = {0: "batch", 2: "height", 3: "width"} if dynamic else {0: "batch"}
    buffer = io.BytesIO()
    torch.onnx.export(
        model,
        (example,),
        buffer,
        dynamo=False,
        input_names=["image"],
        output_names=["logits"],
        dynamic_axes={"image": axes, "logits": axes},
        opset_version=OPSET,
    )
    proto = onnx.load_from_string(buffer.getvalue())
    onnx.helper.set_model_props(proto, {METADATA_KEY: metadata})
    file.write(proto.SerializeToString())


def _load_onnx(path: Path) -> Runner:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()  # PyTorch's (OMP_NUM_THREADS): comparable timings
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return lambda batch: session.run(None, {"image": batch})[0]


def _save_torchscript(model: nn.Module, example: torch.Tensor, file: BinaryIO, dynamic: bool, metadata: str) -> None:
    traced = torch.jit.trace(model, (example,), check_trace=False)
    torch.jit.save(traced, file, _extra_files={f"{METADATA_KEY}.json": metadata})


def _jit_load(path: Path, extra_files: dict[str, str] | None = None) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit's deprecation notice: the format is still read
        return torch.jit.load(str(path), map_location="cpu", _extra_files=extra_files)


def _load_torchscript(path: Path) -> Runner:
    module = _jit_load(path)

    def run(batch: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return module(torch.from_numpy(batch)).numpy()

    return run


def _onnx_metadata(path: Path) -> str:
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    return {prop.key: prop.value for prop in proto.metadata_props}[METADATA_KEY]


def _torchscript_metadata(path: Path) -> str:
    extra = {f"{METADATA_KEY}.json": ""}
    _jit_load(path, extra)
    return extra[f"{METADATA_KEY}.json"]


FORMATS.add("onnx", ExportFormat(".onnx", _save_onnx, _load_onnx, _onnx_metadata))
FORMATS.add("torchscript", ExportFormat(".pt", _save_torchscript, _load_torchscript, _torchscript_metadata))


def export_format(name: str) -> ExportFormat:
    if name not in FORMATS:
        raise ConfigError(f"--format: unknown export format '{name}'; choose one of {', '.join(sorted(FORMATS))}")
    return FORMATS[name]


def load_exported(path: str | Path, format_name: str) -> Runner:
    """A function from a normalised float32 batch to the logits of the file an export wrote."""
    return export_format(format_name).load(Path(path))


def read_metadata(path: str | Path, format_name: str) -> dict[str, Any]:
    """The JSON metadata an export stored in its file (classes, palette, processing, size divisor)."""
    return json.loads(export_format(format_name).metadata(Path(path)))


def check_export_output(output: str | Path, format_name: str) -> Path:
    """``output`` as a file to write: a known format, not a folder, its folder not a file."""
    entry = export_format(format_name)
    path = Path(output)
    if path.is_dir():
        raise ExportError(f"--output: {path} is a folder; give a file name, e.g. {path / ('model' + entry.suffix)}")
    for folder in path.parents:
        if folder.exists():
            if not folder.is_dir():
                raise ExportError(f"--output: {path} is inside {folder}, which is a file, not a folder")
            break
    return path


def example_sizes(model: nn.Module, crop_size: int) -> list[tuple[int, int]]:
    """Two input sizes, one not square, near ``crop_size``: the first is traced, both are verified. An
    encoder built for one input size (``fixed_input_size``) gets that size only."""
    fixed = getattr(model, "fixed_input_size", None)
    if fixed:
        return [(fixed, fixed)]
    divisor = size_divisor(model)
    side = max(divisor, crop_size // divisor * divisor)
    return [(side, side + 2 * divisor), (side + divisor, side)]


@dataclass(frozen=True)
class Exported:
    path: Path
    sha256: Path  # "<hex>  <name>" beside the file (sha256sum -c reads it)
    max_difference: float  # largest |exported - eager| logit over the verified sizes


@torch.no_grad()
def export_model(
    model: nn.Module,
    format_name: str,
    output: str | Path,
    crop_size: int,
    metadata: Mapping[str, Any],
    input_images: int = 1,
) -> Exported:
    """Write ``model`` (evaluation mode) to ``output`` in ``format_name`` with ``metadata`` stored in the
    file, verify the file against the eager model at two sizes, and write its SHA-256 beside it. A file
    that disagrees by more than :data:`TOLERANCE` is not kept (an earlier file at ``output`` stays)."""
    path = check_export_output(output, format_name)
    entry = export_format(format_name)
    model = model.eval()
    sizes = example_sizes(model, crop_size)
    generator = torch.Generator().manual_seed(0)
    examples = [torch.randn(1, 3 * input_images, h, w, generator=generator) for h, w in sizes]
    info = {
        **metadata,
        "format": format_name,
        "size_divisor": size_divisor(model),
        "fixed_input_size": getattr(model, "fixed_input_size", None),
        "processing": PROCESSING,
    }
    # Written beside the target and verified there: a file that fails leaves an earlier export as it was.
    candidate = path.with_name(f".{path.name}.unverified")
    try:
        with dynamic_sizes():
            atomic_write(candidate, lambda file: entry.save(model, examples[0], file, len(sizes) > 1, json.dumps(info)))
        run = entry.load(candidate)
        difference = max(float(np.abs(run(x.numpy()) - model(x).numpy()).max()) for x in examples)
        if not difference <= TOLERANCE:
            raise ExportError(
                f"{format_name} export of encoder '{getattr(model, 'encoder_name', '?')}' differs from the PyTorch "
                f"model by {difference:.2e} (> {TOLERANCE:g}) at {sizes}; {path} was not written"
            )
        os.replace(candidate, path)
    finally:
        candidate.unlink(missing_ok=True)
    digest = path.with_name(path.name + ".sha256")
    write_text_atomic(digest, f"{sha256_file(path)}  {path.name}\n")
    return Exported(path, digest, difference)
