"""Triton python-backend model running the whole DiTF pipeline server-side (copied as model.py).

`ditf triton-repo` copies this file into REPO/extract/1/model.py and REPO/match/1/model.py, with
the export's manifest.json beside it. The server's Python needs `ditf-runtime` installed. The
config's parameters choose how features are computed:

    ditf_task         "extract" or "match" (protocol.py)
    ditf_mode         "bls":   preprocessing, noise and matching here, the graph itself in the
                               repository's onnxruntime / tensorrt_plan model (a BLS call), so it
                               runs on that model's instances (GPU, TensorRT)
                      "local": ditf_runtime.load(ditf_export_dir) in this process (onnxruntime)
    ditf_graph_model  the graph model's name (bls)
    ditf_export_dir, ditf_device, ditf_threads   (local)
    ditf_ensemble     the only E the graph accepts (TensorRT engines), empty otherwise
    ditf_fusion       two fused exports (JSON): weights, graph_models (bls), export_dirs (local) and
                      ensembles; each member's manifest is in 1/members/<k>/manifest.json

Unlike PyTriton, the python backend answers each request on its own: a malformed request gets
its own error and never fails the requests batched with it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def _parameters(config: dict) -> dict[str, str]:
    return {key: value.get("string_value", "") for key, value in config.get("parameters", {}).items()}


class TritonPythonModel:
    def initialize(self, args):
        from ditf_runtime.manifest import Manifest
        from ditf_runtime.serving.pipeline import FeaturePipeline

        config = json.loads(args["model_config"])
        params = _parameters(config)
        self.task = params["ditf_task"]
        self.input_names = [spec["name"] for spec in config["input"]]
        version = Path(args["model_repository"]) / args["model_version"]
        manifest = Manifest.load(version)
        self.extractor = None
        if params.get("ditf_fusion"):
            self.pipeline = self._fused_pipeline(json.loads(params["ditf_fusion"]), params, version, config)
            return
        if params.get("ditf_mode", "bls") == "local":
            import ditf_runtime

            threads = params.get("ditf_threads") or None
            self.extractor = ditf_runtime.load(
                params["ditf_export_dir"],
                device=params.get("ditf_device") or "cpu",
                threads=int(threads) if threads else None,
            )
            run = self.extractor.run
        else:
            run = _GraphModel(params["ditf_graph_model"])
        ensemble = params.get("ditf_ensemble") or None
        self.pipeline = FeaturePipeline(
            manifest,
            run,
            max_batch_size=max(1, int(config.get("max_batch_size", 1))),
            fixed_ensemble=int(ensemble) if ensemble else None,
        )

    def _fused_pipeline(self, fusion: dict, params: dict, version: Path, config: dict):
        """Two graphs (BLS calls, or both exports loaded here) and the fusion of their maps."""
        from ditf_runtime.manifest import Manifest
        from ditf_runtime.serving.pipeline import FeaturePipeline, Member
        from ditf_runtime.memory import budget_check

        manifests = [Manifest.load(version / "members" / str(k)) for k in range(len(fusion["weights"]))]
        if params.get("ditf_mode", "bls") == "local":
            import ditf_runtime

            threads = params.get("ditf_threads") or None
            self.extractor = ditf_runtime.load(*fusion["export_dirs"], weights=fusion["weights"],
                                               device=params.get("ditf_device") or "cpu",
                                               threads=int(threads) if threads else None)
            members = [Member(m.manifest, m.run, graph=m.graph) for m in self.extractor.members]
            check_memory = budget_check(self.extractor)  # both graphs run here, at once
        else:  # the graph models run in Triton's own instances: their memory is Triton's to manage
            members = [Member(manifest, _GraphModel(name), ensemble) for manifest, name, ensemble
                       in zip(manifests, fusion["graph_models"], fusion["ensembles"])]
            check_memory = None
        return FeaturePipeline.fused(members, fusion["weights"], check_memory=check_memory,
                                     max_batch_size=max(1, int(config.get("max_batch_size", 1))))

    def execute(self, requests):
        import triton_python_backend_utils as pb_utils

        feeds = []
        for request in requests:
            feed = {}
            for name in self.input_names:
                tensor = pb_utils.get_input_tensor_by_name(request, name)
                if tensor is not None:
                    feed[name] = tensor.as_numpy()
            feeds.append(feed)
        responses = []
        for result in self.pipeline.handle(self.task, feeds):
            if isinstance(result, Exception):
                error = pb_utils.TritonError(f"{type(result).__name__}: {result}")
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=error))
            else:
                tensors = [pb_utils.Tensor(name, np.ascontiguousarray(array)) for name, array in result.items()]
                responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
        return responses

    def finalize(self):
        if self.extractor is not None:
            self.extractor.close()


class _GraphModel:
    """run(image, noise) -> features through a BLS request to the repository's graph model."""

    def __init__(self, model_name: str) -> None:
        self.model_name = model_name

    def __call__(self, image: np.ndarray, noise: np.ndarray | None) -> np.ndarray:
        import triton_python_backend_utils as pb_utils

        from ditf_runtime.errors import BackendError

        inputs = [pb_utils.Tensor("image", image)]
        if noise is not None:  # graphs without noise (DINOv2) take the image alone
            inputs.append(pb_utils.Tensor("noise", noise))
        request = pb_utils.InferenceRequest(
            model_name=self.model_name, inputs=inputs, requested_output_names=["features"]
        )
        response = request.exec()
        if response.has_error():
            raise BackendError(f"graph model {self.model_name!r} failed: {response.error().message()}")
        return pb_utils.get_output_tensor_by_name(response, "features").as_numpy()
