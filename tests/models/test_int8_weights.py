"""Every shipped INT8 file declares its weight width truthfully, and a 7-bit one cannot saturate.

x86 CPUs without VNNI run ONNX Runtime's u8×s8 convolutions with VPMADDUBSW, which adds two u8·s8 products
into a saturating int16: with 8-bit weights 2·255·127 overflows (a Zen 3 box lost 2 of 7 vehicles), with
|w| ≤ 64 the sum is at most 2·255·64 = 32640 and every CPU computes the same thing. That is a property of the
file, so it is checked here on any machine, not only on one without VNNI."""

from __future__ import annotations

from pathlib import Path

import pytest

from models.quantize import int8_weight_range
from pipeline.manifest import load_manifest

MODELS = Path(__file__).resolve().parents[2] / "models"
INT8 = [
    (name, e.variants["int8"]) for name, e in load_manifest(MODELS).models.items() if "int8" in e.variants
]


@pytest.mark.parametrize(("name", "variant"), INT8, ids=[n for n, _ in INT8])
def test_int8_weights_fit_the_declared_width(name: str, variant: object) -> None:
    lo, hi = int8_weight_range(MODELS / variant.file)  # type: ignore[attr-defined]
    bits = variant.weight_bits  # type: ignore[attr-defined]
    if bits == 7:
        assert lo >= -64 and hi <= 64, f"{name}: weights span [{lo}, {hi}], declared 7-bit"
        assert 2 * 255 * max(-lo, hi) <= 32767  # the VPMADDUBSW pair sum cannot saturate
    else:
        assert lo < -64 or hi > 64, f"{name}: weights fit 7 bits [{lo}, {hi}]; declare weight_bits: 7"


def test_vehicle_models_ship_7_bit_weights() -> None:
    # The default detector must give the same boxes on every x86 box, VNNI or not.
    widths = {name: v.weight_bits for name, v in INT8}  # type: ignore[attr-defined]
    assert widths["vehicles"] == 7 and widths["vehicles-320"] == 7
