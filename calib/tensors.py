"""Initializers read and written one tensor at a time: graph rewrites that never hold a second model.

A FLUX export keeps tens of GB of weights. The precision rewrites work on the graph loaded WITHOUT its
external data (`load_graph`): the proto holds nodes and, for every large initializer, only where its
bytes are. A `TensorStore` reads one initializer's values when a rewrite asks for them and appends new
tensors to one new external-data file as soon as they are made; `GraphRewrite.commit` then copies the
initializers the rewrite kept as byte ranges (never decoded), and writes the small proto. So a rewrite
holds at most a few tensors at a time, and no protobuf over 2 GB is ever serialised.

The same store also serves small in-memory models (the tests' hand-made graphs): with no sink, new
tensors stay inline in the proto, exactly as before.
"""

from __future__ import annotations

import os
import tempfile
import weakref
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from onnx.external_data_helper import uses_external_data

# Initializers of at least this many bytes go to the external-data file (the export folder's contract:
# every initializer over 1 KiB external, in one file beside model.onnx).
EXTERNAL_THRESHOLD = 1024
# Tensors of at least ALIGN_THRESHOLD bytes start at a multiple of ALIGNMENT in the data file (page and
# Windows allocation-granularity aligned), so they can be memory-mapped; small ones are packed.
ALIGNMENT = 64 << 10
ALIGN_THRESHOLD = 1 << 20
COPY_CHUNK = 64 << 20


@dataclass
class ReadStats:
    """What a store read: tensors, bytes, and the most bytes of read arrays alive at one time."""

    tensors: int = 0
    bytes: int = 0
    live_bytes: int = 0
    peak_live_bytes: int = 0


def load_graph(path: str | os.PathLike) -> onnx.ModelProto:
    """The model at `path` without its external data: nodes, small inline tensors, and where the rest lives."""
    return onnx.load(str(path), load_external_data=False)


def data_file_name(model_path: str | os.PathLike) -> str:
    """The one external-data file of a model file: `model.onnx` -> `model.onnx.data`."""
    return Path(model_path).name + ".data"


class TensorStore:
    """Reads a model's initializers (inline, or external under `base_dir`) and writes new ones.

    sink: the external-data file new tensors are appended to (None: they stay inline, for small in-memory
    models). Reading counts tensors and tracks the bytes of read arrays still alive (`stats`).
    """

    def __init__(self, base_dir: str | os.PathLike | None = None, sink: str | os.PathLike | None = None,
                 threshold: int = EXTERNAL_THRESHOLD):
        self.base_dir = Path(base_dir) if base_dir is not None else None
        self.sink = Path(sink) if sink is not None else None
        self.threshold = int(threshold)
        self.stats = ReadStats()
        self._out = None
        self._location = self.sink.name if self.sink is not None else None

    @classmethod
    def in_memory(cls) -> "TensorStore":
        return cls()

    # -- reading ---------------------------------------------------------------------------------
    def read(self, tensor: TensorProto) -> np.ndarray:
        """The values of one initializer, read now (external: from its file; never cached)."""
        if not uses_external_data(tensor):
            arr = numpy_helper.to_array(tensor)
        else:
            arr = self._read_external(tensor)
        self._track(arr)
        return arr

    def _read_external(self, tensor: TensorProto) -> np.ndarray:
        info = {e.key: e.value for e in tensor.external_data}
        if self.base_dir is None:
            raise ValueError(f"initializer {tensor.name} lives in {info.get('location')}: this store has no folder "
                             "to read it from (load the model with load_graph and give its folder)")
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.data_type))
        count = int(np.prod(tensor.dims, dtype=np.int64))
        length = int(info.get("length", count * dtype.itemsize))
        if length != count * dtype.itemsize:
            raise ValueError(f"initializer {tensor.name}: {length} bytes on disk, {count * dtype.itemsize} expected")
        path = self.base_dir / info["location"]
        arr = np.fromfile(path, dtype=dtype, count=count, offset=int(info.get("offset", 0)))
        if arr.size != count:
            raise ValueError(f"{path} is truncated: initializer {tensor.name} needs {length} bytes")
        return arr.reshape(tuple(tensor.dims))

    def _track(self, arr: np.ndarray) -> None:
        stats = self.stats
        stats.tensors += 1
        stats.bytes += arr.nbytes
        stats.live_bytes += arr.nbytes
        stats.peak_live_bytes = max(stats.peak_live_bytes, stats.live_bytes)
        weakref.finalize(arr, _release, stats, arr.nbytes)

    # -- writing ---------------------------------------------------------------------------------
    def new(self, array: np.ndarray, name: str, data_type: int | None = None) -> TensorProto:
        """A new initializer holding `array`: written to the sink now (large ones), or inline.

        data_type: TensorProto.BFLOAT16 for bfloat16 bits given as a uint16 array.
        """
        array = np.require(array, requirements="C")  # (ascontiguousarray would make 0-d scalars 1-d)
        if data_type is None:
            tensor = numpy_helper.from_array(array, name) if self.sink is None or array.nbytes < self.threshold \
                else _header(name, helper.np_dtype_to_tensor_dtype(array.dtype), array.shape)
        else:
            tensor = _header(name, data_type, array.shape)
            if self.sink is None or array.nbytes < self.threshold:
                tensor.raw_data = array.tobytes()
        if self.sink is not None and array.nbytes >= self.threshold:
            self._append(tensor, memoryview(array.reshape(-1).view(np.uint8)), array.nbytes)
        return tensor

    def _file(self):
        if self._out is None:
            if self.sink is None:
                raise ValueError("this store writes inline: it has no external-data file")
            self._out = open(self.sink, "wb")
        return self._out

    def _append(self, tensor: TensorProto, data, size: int) -> None:
        """Write `data` (`size` bytes: bytes-like, or an iterable of chunks) at the end of the sink (large
        tensors aligned); point `tensor` at it."""
        f = self._file()
        offset = f.tell()
        if size >= ALIGN_THRESHOLD:
            offset = -(-offset // ALIGNMENT) * ALIGNMENT
            f.seek(offset)
        length = 0
        for chunk in ([data] if isinstance(data, (bytes, memoryview)) else data):
            f.write(chunk)
            length += len(chunk)
        tensor.ClearField("raw_data")
        del tensor.external_data[:]
        tensor.data_location = TensorProto.EXTERNAL
        for key, value in (("location", self._location), ("offset", str(offset)), ("length", str(length))):
            tensor.external_data.add(key=key, value=value)

    def keep(self, tensor: TensorProto) -> None:
        """Move an initializer the rewrite kept into the sink: large external ones as a byte copy (never
        decoded), large inline ones out of the proto; small ones inline (onnxruntime reads shape tensors
        only from the proto)."""
        if self.sink is None:
            return
        if uses_external_data(tensor):
            info = {e.key: e.value for e in tensor.external_data}
            if info["location"] == self._location:
                return  # written by this store already
            src, offset, length = self.base_dir / info["location"], int(info.get("offset", 0)), int(info["length"])
            if length < self.threshold:
                raw = b"".join(_chunks(src, offset, length))
                del tensor.external_data[:]
                tensor.data_location = TensorProto.DEFAULT
                tensor.raw_data = raw
            else:
                self._append(tensor, _chunks(src, offset, length), length)
        elif len(tensor.raw_data) >= self.threshold:
            self._append(tensor, tensor.raw_data, len(tensor.raw_data))

    def flush(self) -> None:
        """Make what was written visible to readers of the file (an onnxruntime session mid-rewrite)."""
        if self._out is not None:
            self._out.flush()

    def close(self) -> None:
        if self._out is not None:
            self._out.close()
            self._out = None


def _release(stats: ReadStats, nbytes: int) -> None:
    stats.live_bytes -= nbytes


def _header(name: str, data_type: int, shape) -> TensorProto:
    tensor = TensorProto()
    tensor.name = name
    tensor.data_type = data_type
    tensor.dims.extend(int(d) for d in shape)
    return tensor


def _chunks(path: Path, offset: int, length: int):
    with open(path, "rb") as f:
        f.seek(offset)
        left = length
        while left > 0:
            chunk = f.read(min(COPY_CHUNK, left))
            if not chunk:
                raise ValueError(f"{path} is truncated at offset {offset + length - left}")
            left -= len(chunk)
            yield chunk


class GraphRewrite:
    """One rewrite of the model file `src` into `dst` (which may be `src` itself), weights streamed.

        with GraphRewrite(src, dst) as rw:
            new_model = some_rewrite(rw.model, store=rw.store)   # reads and writes tensors through rw.store
            rw.commit(new_model)

    New tensors go to a hidden data file in dst's folder; `commit` copies every kept initializer there,
    then renames it to dst's data file and writes dst. Leaving the block without commit removes it.
    """

    def __init__(self, src: str | os.PathLike, dst: str | os.PathLike, model: onnx.ModelProto | None = None,
                 threshold: int = EXTERNAL_THRESHOLD):
        self.src, self.dst = Path(src), Path(dst)
        self.model = model if model is not None else load_graph(self.src)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.dst.name}.", suffix=".data.tmp", dir=self.dst.parent)
        os.close(fd)
        self._tmp_data = Path(tmp)
        self.store = TensorStore(self.src.parent, self._tmp_data, threshold)
        self.committed = False

    def __enter__(self) -> "GraphRewrite":
        return self

    def __exit__(self, *exc) -> None:
        self.store.close()
        if not self.committed and self._tmp_data.exists():
            self._tmp_data.unlink()

    def commit(self, model: onnx.ModelProto) -> Path:
        store = self.store
        for init in _all_initializers(model.graph):
            store.keep(init)
        store.close()
        final = data_file_name(self.dst)
        for init in _all_initializers(model.graph):
            for entry in init.external_data:
                if entry.key == "location" and entry.value == self._tmp_data.name:
                    entry.value = final
        if model.ByteSize() >= 2**31 - 1:
            raise ValueError("the rewritten graph is over 2 GB without its weights: an initializer stayed inline")
        os.chmod(self._tmp_data, 0o644)  # mkstemp makes 0600; exports are meant to be shared
        os.replace(self._tmp_data, self.dst.parent / final)
        tmp_model = self.dst.with_name(f".{self.dst.name}.tmp")
        with open(tmp_model, "wb") as f:
            f.write(model.SerializeToString())
        os.replace(tmp_model, self.dst)
        self.committed = True
        return self.dst


def all_graphs(graph: onnx.GraphProto):
    """`graph` and every subgraph in it (If / Loop / Scan bodies), depth first."""
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from all_graphs(attr.g)
            for g in attr.graphs:
                yield from all_graphs(g)


def _all_initializers(graph: onnx.GraphProto):
    for g in all_graphs(graph):
        yield from g.initializer
