"""The runtime on a real export (flux-tiny through ditf-export), not just the hand-built contract graph."""

from __future__ import annotations

import numpy as np
import pytest

import ditf_runtime
from ditf_runtime.manifest import Manifest


@pytest.fixture(scope="module")
def extractor(flux_tiny_export):
    with ditf_runtime.load(flux_tiny_export, threads=2) as loaded:
        yield loaded


def test_reference_parity_on_the_exported_graph(extractor):
    result = extractor.verify_reference()
    assert result, str(result)


def test_extract_follows_the_exported_geometry(extractor, flux_tiny_export):
    manifest = Manifest.load(flux_tiny_export)
    geometry = manifest.geometry
    rng = np.random.default_rng(0)
    wide = rng.integers(0, 256, (60, 100, 3), dtype=np.uint8)
    tall = rng.integers(0, 256, (90, 50, 3), dtype=np.uint8)
    a, b = extractor.extract([wide, tall], ensemble=1)
    for fm, size in ((a, (60, 100)), (b, (90, 50))):
        assert fm.image_size == size and max(fm.input_size) <= manifest.preprocess.long_side + geometry.size_multiple
        assert fm.shape == (
            1,
            geometry.feature_channels,
            fm.input_size[0] // geometry.feature_stride,
            fm.input_size[1] // geometry.feature_stride,
        )
        assert np.isfinite(np.asarray(fm)).all()
    alone = extractor.extract(wide, ensemble=1)[0]
    np.testing.assert_allclose(np.asarray(alone), np.asarray(a), rtol=0, atol=1e-5)
    points = ditf_runtime.transfer_keypoints(a, b, [[0, 0], [99, 59], [50, 30]])
    assert points.shape == (3, 2) and (points[:, 0] < 50).all() and (points[:, 1] < 90).all()
