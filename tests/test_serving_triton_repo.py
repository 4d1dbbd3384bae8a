"""`ditf triton-repo`: configs that Triton's own ModelConfig protobuf parses, matching the manifest."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from ditf_runtime.cli import main
from ditf_runtime.errors import InputError
from ditf_runtime.manifest import MANIFEST_FILE, MODEL_DATA_FILE, MODEL_FILE, Manifest, sha256_file
from ditf_runtime.serving import triton_repo
from ditf_runtime.serving.protocol import extract_ports, match_ports
from ditf_runtime.serving.triton_repo import TritonOptions, write_model_repository

text_format = pytest.importorskip("google.protobuf.text_format", reason="installed by `make setup` (ditf-runtime[serve]); absent only in a hand-made environment")
model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="installed by `make setup` (ditf-runtime[serve]); absent only in a hand-made environment")


def parse(path: Path):
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def dims(tensor) -> list[int]:
    return list(tensor.dims)


def files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_onnx_repository_layout_and_config(export_dir, tmp_path):
    options = TritonOptions(max_batch_size=4, instance_count=2, threads=1)
    repo = write_model_repository(export_dir, tmp_path / "repo", options)
    manifest = Manifest.load(export_dir)
    name = "tiny-random"
    # Triton's directory form of an ONNX model with external data: 1/model.onnx/ holds both files.
    assert files(repo) == [
        "extract/1/manifest.json",
        "extract/1/model.py",
        "extract/config.pbtxt",
        "match/1/manifest.json",
        "match/1/model.py",
        "match/config.pbtxt",
        f"{name}/1/model.onnx/model.onnx",
        f"{name}/1/model.onnx/model.onnx.data",
        f"{name}/config.pbtxt",
        f"{name}/manifest.json",
    ]
    for file in (MODEL_FILE, MODEL_DATA_FILE):
        assert sha256_file(repo / name / "1" / MODEL_FILE / file) == manifest.files[file]["sha256"]

    config = parse(repo / name / "config.pbtxt")
    assert config.name == name and config.backend == "onnxruntime" and config.platform == ""
    assert config.default_model_filename == MODEL_FILE
    assert config.max_batch_size == 4 and config.HasField("dynamic_batching")
    assert config.dynamic_batching.max_queue_delay_microseconds == 2000
    c, channels = manifest.geometry.latent_channels, manifest.geometry.feature_channels
    assert {t.name: (t.data_type, dims(t)) for t in config.input} == {
        "image": (model_config_pb2.TYPE_FP32, [3, -1, -1]),
        "noise": (model_config_pb2.TYPE_FP32, [-1, c, -1, -1]),
    }
    assert [(t.name, t.data_type, dims(t)) for t in config.output] == [
        ("features", model_config_pb2.TYPE_FP32, [channels, -1, -1])
    ]
    # ...which is the manifest's TensorSpecs without the batch axis, names -> -1
    for spec in manifest.inputs + manifest.outputs:
        expected = [d if isinstance(d, int) else -1 for d in spec.shape[1:]]
        assert expected == dims(next(t for t in list(config.input) + list(config.output) if t.name == spec.name))
    (group,) = config.instance_group
    assert group.kind == model_config_pb2.ModelInstanceGroup.KIND_CPU and group.count == 2
    assert config.parameters["intra_op_thread_count"].string_value == "1"


def test_pipeline_models_declare_the_served_protocol(export_dir, tmp_path):
    repo = write_model_repository(export_dir, tmp_path / "repo", TritonOptions(name="graph"))
    geometry = Manifest.load(export_dir).geometry
    for task, (inputs, outputs) in (("extract", extract_ports(geometry)), ("match", match_ports(geometry))):
        config = parse(repo / task / "config.pbtxt")
        assert config.backend == "python" and config.max_batch_size == 8
        assert [(t.name, model_config_pb2.DataType.Name(t.data_type), dims(t), t.optional) for t in config.input] == [
            (p.name, p.config_dtype, list(p.shape), p.optional) for p in inputs
        ]
        assert [(t.name, dims(t)) for t in config.output] == [(p.name, list(p.shape)) for p in outputs]
        params = {k: v.string_value for k, v in config.parameters.items()}
        assert params == {"ditf_task": task, "ditf_mode": "bls", "ditf_ensemble": "", "ditf_graph_model": "graph"}
        assert (repo / task / "1" / MANIFEST_FILE).read_text() == (export_dir / MANIFEST_FILE).read_text()
        assert (repo / task / "1" / "model.py").read_text() == Path(triton_repo.__file__).with_name(
            "triton_model.py"
        ).read_text()


def test_tensorrt_repository_uses_the_engine_limits(export_dir, tmp_path):
    """The plan is opaque here (no TensorRT): only its record (profiles, E) shapes the config."""
    manifest = Manifest.load(export_dir)
    export = tmp_path / "export"
    export.mkdir()
    for item in export_dir.iterdir():
        (export / item.name).symlink_to(item)
    engine = export / "engines" / "nvidia-h100-80gb-hbm3-trt10.13.0"
    engine.mkdir(parents=True)
    (engine / "model.plan").write_bytes(b"plan bytes")
    image = {"min": [1, 3, 256, 256], "opt": [2, 3, 640, 480], "max": [4, 3, 1024, 1024]}
    record = {
        "schema_version": 2,
        "flavor": "tensorrt",
        "onnx_sha256": {name: manifest.files[name]["sha256"] for name in (MODEL_FILE, "model.onnx.data")},
        "ensemble": 3,
        "profiles": [{"image": image, "noise": {}}],
    }
    (engine / "engine.json").write_text(json.dumps(record))

    repo = write_model_repository(export, tmp_path / "repo", TritonOptions(backend="tensorrt", pipeline="bls"))
    config = parse(repo / "tiny-random" / "config.pbtxt")
    assert config.platform == "tensorrt_plan" and config.backend == ""
    assert (repo / "tiny-random" / "1" / "model.plan").read_bytes() == b"plan bytes"
    assert config.max_batch_size == 4  # the profile's largest batch, below the default 8
    noise = next(t for t in config.input if t.name == "noise")
    assert dims(noise) == [3, manifest.geometry.latent_channels, -1, -1]  # E fixed by the engine
    assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
    assert parse(repo / "extract" / "config.pbtxt").parameters["ditf_ensemble"].string_value == "3"

    with pytest.raises(InputError, match="exceeds the engine's largest profile batch 4"):
        write_model_repository(export, tmp_path / "r2", TritonOptions(backend="tensorrt", max_batch_size=8))
    with pytest.raises(InputError, match="GPU instances"):
        write_model_repository(export, tmp_path / "r3", TritonOptions(backend="tensorrt", instance_kind="cpu"))
    record["onnx_sha256"] = {**record["onnx_sha256"], MODEL_FILE: "0" * 64}
    (engine / "engine.json").write_text(json.dumps(record))
    with pytest.raises(InputError, match="another model.onnx"):
        write_model_repository(export, tmp_path / "r4", TritonOptions(backend="tensorrt"))
    with pytest.raises(InputError, match="no engines"):
        write_model_repository(export_dir, tmp_path / "r5", TritonOptions(backend="tensorrt"))


def test_no_batching_keeps_the_batch_axis(export_dir, tmp_path):
    repo = write_model_repository(export_dir, tmp_path / "repo", TritonOptions(max_batch_size=0, pipeline=None))
    assert sorted(p.name for p in repo.iterdir()) == ["tiny-random"]
    config = parse(repo / "tiny-random" / "config.pbtxt")
    assert config.max_batch_size == 0 and not config.HasField("dynamic_batching")
    assert dims(next(t for t in config.input if t.name == "image")) == [-1, 3, -1, -1]


def test_written_atomically_and_never_over_an_existing_repo(export_dir, tmp_path, monkeypatch):
    target = tmp_path / "repo"
    calls = []
    real = triton_repo._write_pipeline_model

    def fail_on_match(model_dir, task, *args, **kwargs):
        calls.append(task)
        if task == "match":
            raise OSError(28, "No space left on device")
        return real(model_dir, task, *args, **kwargs)

    monkeypatch.setattr(triton_repo, "_write_pipeline_model", fail_on_match)
    with pytest.raises(OSError):
        write_model_repository(export_dir, target)
    assert calls == ["extract", "match"]
    assert list(tmp_path.iterdir()) == []  # neither the repo nor its temporary folder

    monkeypatch.undo()
    write_model_repository(export_dir, target, TritonOptions(pipeline=None))
    with pytest.raises(InputError, match="exists"):
        write_model_repository(export_dir, target)
    write_model_repository(export_dir, target, overwrite=True)
    assert sorted(p.name for p in target.iterdir()) == ["extract", "match", "tiny-random"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["repo"]


def test_cli_triton_repo(export_dir, tmp_path):
    runner = CliRunner()
    result = runner.invoke(main, ["triton-repo", str(export_dir), str(tmp_path / "repo"), "--name", "feat", "--pipeline", "none"])
    assert result.exit_code == 0, result.output
    assert parse(tmp_path / "repo" / "feat" / "config.pbtxt").name == "feat"
    again = runner.invoke(main, ["triton-repo", str(export_dir), str(tmp_path / "repo")])
    assert again.exit_code == 1 and "exists" in again.output and "Traceback" not in again.output
    bad = runner.invoke(main, ["triton-repo", str(export_dir), str(tmp_path / "r2"), "--name", "extract"])
    assert bad.exit_code == 1 and "not extract/match" in bad.output
