"""The largest image size: one source of truth (the export's geometry.max_size) for the commands and the server."""

from __future__ import annotations

import numpy as np
import ditf_runtime
from click.testing import CliRunner
from ditf_runtime.cli import main
from ditf_runtime.memory import MemoryBudgetError
from ditf_runtime.serving.admission import Admission
from ditf_runtime.serving.pipeline import FeaturePipeline


def test_server_and_command_line_take_the_same_size_limit(flux_tiny_export, tmp_path):
    """flux-tiny's position tables reach 16384 px: `ditf extract --size` says so, and so must the server (it
    said 'between 16 and 4096' for every export). Sizes under the limit that do not fit the memory budget are
    refused by the budget, before the image is resized."""
    image = np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    (tmp_path / "in").mkdir()
    from PIL import Image

    Image.fromarray(image).save(tmp_path / "in" / "a.png")
    cli = CliRunner().invoke(main, ["extract", str(tmp_path / "in"), "--model", str(flux_tiny_export), "--out",
                                    str(tmp_path / "out"), "--size", "20000"])
    assert cli.exit_code == 1 and "use --size 16384 or less" in cli.output, cli.output
    with ditf_runtime.load(flux_tiny_export, threads=1) as extractor:
        pipeline = FeaturePipeline(extractor.manifest, extractor.run, graph=extractor.graph,
                                   admission=Admission([extractor.manifest]))

        def refusal(size):
            (result,) = pipeline.handle("extract", [{"image": image[None], "size": np.array([[size]], np.int64)}])
            assert isinstance(result, Exception), result
            return result

        past = refusal(20000)
        assert "past this export's limit" in str(past) and "use size 16384 or less" in str(past), past
        assert "4096" not in str(refusal(8192))
        assert isinstance(refusal(8192), MemoryBudgetError)  # under the limit: the memory budget decides
        (ok,) = pipeline.handle("extract", [{"image": image[None], "size": np.array([[64]], np.int64)}])
        assert ok["features"].shape == (1, 64, 3, 4)
