"""Device-side runtimes: ONNX Runtime through IOBinding and the onnx2torch conversion, on CPU tensors here
(the same code paths as on the GPU, less the streams) and on CUDA tensors when there is a GPU."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from edge_inspect.inspector.device.runtimes import cuda_usable, load_runtime, pick_device
from edge_inspect.inspector.device.runtimes.base import TensorSpec, check_batch, fetch_outputs
from edge_inspect.inspector.device.runtimes.onnx_lowering import (
    TARGET_OPSET,
    UnsupportedGraphError,
    lower_for_onnx2torch,
)
from edge_inspect.inspector.device.runtimes.ort_iobinding import OrtIoBindingRuntime, cuda_provider_options
from edge_inspect.inspector.device.runtimes.torch_backend import (
    HostShape,
    TorchRuntime,
    check_output_producers,
    convert,
    place,
)
from edge_inspect.inspector.infer import cuda_device_count, load_model
from edge_inspect.inspector.preprocess import PreprocessRecipe, preprocess_batch
from edge_inspect.models.package import ModelCard, ModelPackage, Thresholds, load_package, write_package
from tests.toy_models import TOY_SIZE

CUDA = torch.cuda.is_available() and cuda_device_count() > 0
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
EXPORT_SIZE = 64
# Batch sizes in an order that reuses each size's buffers after another size ran in between.
BATCH_SIZES = (3, 1, 3, 2, 1)


def random_batch(runtime: OrtIoBindingRuntime | TorchRuntime, n: int, seed: int) -> torch.Tensor:
    shape = (n, *runtime.input.dims[1:])
    values = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    return torch.from_numpy(values).to(runtime.device)


def poison(outputs: dict[str, torch.Tensor]) -> None:
    """Fill a run's outputs with NaN: a later run that reuses the buffers must overwrite every element."""
    # A CUDA graph's static outputs are inference tensors, writable only in inference mode.
    with torch.inference_mode():
        for tensor in outputs.values():
            tensor.fill_(float("nan"))


def toy_graph_package(
    directory: Path, outputs: list[onnx.ValueInfoProto], nodes: list[onnx.NodeProto], map_output: str | None
) -> ModelPackage:
    """A package around a hand-built graph on the toy models' (N, 1, 32, 32) input."""
    image = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 1, TOY_SIZE, TOY_SIZE])
    initializers = [
        helper.make_tensor("all_axes", TensorProto.INT64, [3], [1, 2, 3]),
        helper.make_tensor("channel_axis", TensorProto.INT64, [1], [1]),
    ]
    graph = helper.make_graph(nodes, "toy", [image], outputs, initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    model.ir_version = 9
    directory.mkdir(parents=True, exist_ok=True)
    onnx.save(model, directory / "export.onnx")
    card = ModelCard(
        name="toy-graph",
        version="1",
        family="toy",
        preprocess=PreprocessRecipe(TOY_SIZE, TOY_SIZE, "mono", (0.0,), (1.0,)),
        thresholds=Thresholds(threshold=0.5, score_low=0.0, score_high=1.0),
        map_output=map_output,
    )
    return write_package(directory, directory / "export.onnx", card)


def single_node_model(
    node: onnx.NodeProto,
    inputs: list[onnx.ValueInfoProto],
    ints: dict[str, list[int]] | None = None,
    floats: dict[str, list[float]] | None = None,
) -> onnx.ModelProto:
    """An opset-20 graph of one node with a (1, 1, 4, 4) output, int64 / float initializers as flat lists."""
    output = helper.make_tensor_value_info(node.output[0], TensorProto.FLOAT, [1, 1, 4, 4])
    initializers = [helper.make_tensor(k, TensorProto.INT64, [len(v)], v) for k, v in (ints or {}).items()]
    initializers += [helper.make_tensor(k, TensorProto.FLOAT, [len(v)], v) for k, v in (floats or {}).items()]
    graph = helper.make_graph([node], "one", inputs, [output], initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    model.ir_version = 9
    return model


def float_input(name: str = "x", shape: tuple[int, ...] = (1, 1, 4, 4)) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape))


# --- exported models ------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=["classifier", "classifier-tta", "patchcore"])
def exported(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> ModelPackage:
    """Small real exports (untrained weights): what `edge-inspect train` writes, through the same exporter."""
    from edge_inspect.models.classifier import DihedralAverage, build_classifier
    from edge_inspect.models.efficientnet_lite0 import CONFIG
    from edge_inspect.models.patchcore import PatchCoreConfig, build_patchcore
    from edge_inspect.training.export import (
        MAP_OUTPUT,
        classifier_card,
        export_map_package,
        export_package,
        probability_thresholds,
    )

    torch.manual_seed(0)
    recipe = CONFIG.recipe(EXPORT_SIZE)
    images = np.random.default_rng(0).standard_normal((4, 3, EXPORT_SIZE, EXPORT_SIZE)).astype(np.float32)
    directory = tmp_path_factory.mktemp(request.param)
    if request.param == "patchcore":
        config = PatchCoreConfig(input_size=EXPORT_SIZE, levels=(3, 4), coreset_ratio=0.25)
        model = build_patchcore(pretrained=False, config=config)
        model.fit_memory_bank([torch.from_numpy(images)])
        card = ModelCard(
            name="patchcore-test",
            version="1",
            family="patchcore",
            preprocess=recipe,
            thresholds=Thresholds(threshold=1.0, score_low=0.0, score_high=2.0),
            map_output=MAP_OUTPUT,
            classes=("anomaly",),
        )
        return export_map_package(model, directory, card, images[:2])
    classifier = build_classifier(pretrained=False).eval()
    served = DihedralAverage(classifier) if request.param == "classifier-tta" else classifier
    card = classifier_card("classifier-test", "1", recipe, probability_thresholds(0.5, 0.05), {}, {})
    return export_package(served, directory, card, images[:2])


# --- fetch_outputs and device choice --------------------------------------------------------------


def test_fetch_outputs_copies_the_scores_and_only_the_requested_map_rows() -> None:
    outputs = {
        "score": torch.tensor([0.1, 0.9, 0.2, 0.8]),
        "anomaly_map": torch.arange(4 * 6.0).reshape(4, 2, 3),
    }
    scores, maps = fetch_outputs(outputs, "score", "anomaly_map", [3, 1, 3])
    np.testing.assert_array_equal(scores, np.float32([0.1, 0.9, 0.2, 0.8]))
    assert sorted(maps) == [1, 3]
    np.testing.assert_array_equal(maps[3], outputs["anomaly_map"][3].numpy())
    # The runtime overwrites its buffers on the next run: what was fetched must not change with them.
    poison(outputs)
    assert not np.isnan(scores).any() and not np.isnan(maps[1]).any()


def test_fetch_outputs_without_a_map_or_ng_rows_and_with_a_wrong_row() -> None:
    outputs = {"score": torch.tensor([0.3, 0.7]), "anomaly_map": torch.zeros(2, 2, 2)}
    assert fetch_outputs({"score": outputs["score"]}, "score", None, [1])[1] == {}
    assert fetch_outputs(outputs, "score", "anomaly_map", [])[1] == {}
    with pytest.raises(IndexError, match=r"map rows \[2\] requested from a batch of 2"):
        fetch_outputs(outputs, "score", "anomaly_map", [0, 2])


def test_device_choice_follows_what_the_machine_has() -> None:
    assert pick_device("auto", cuda_usable=True) == "cuda"
    assert pick_device("auto", cuda_usable=False) == "cpu"
    assert pick_device("cpu", cuda_usable=True) == "cpu"
    with pytest.raises(RuntimeError, match=r"none is usable.*device='auto' or 'cpu'"):
        pick_device("cuda", cuda_usable=False)
    with pytest.raises(ValueError, match="'gpu' is not one of"):
        pick_device("gpu", cuda_usable=True)


def test_cuda_provider_options_put_onnx_runtime_on_the_given_stream() -> None:
    assert cuda_provider_options(1, 94_000_000) == {
        "device_id": "1",
        "user_compute_stream": "94000000",
        "has_user_compute_stream": "1",
        "do_copy_in_default_stream": "1",
    }
    with pytest.raises(ValueError, match="handle 0"):
        cuda_provider_options(0, 0)


def test_load_runtime_logs_what_runs_and_refuses_contradictory_options(
    toy_model_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    package = load_package(toy_model_dir)
    with caplog.at_level(logging.INFO, logger="edge_inspect.inspector.device.runtimes"):
        runtime = load_runtime(package, "ort", "auto")
    expected = pick_device("auto", cuda_usable("ort"))
    assert runtime.device.type == expected
    [record] = [r for r in caplog.records if r.getMessage() == "runtime_loaded"]
    assert record.fields["runtime"] == "ort" and record.fields["device"].startswith(expected)  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="cuda_graph=True applies to runtime='torch'"):
        load_runtime(package, "ort", "cpu", cuda_graph=True)
    with pytest.raises(ValueError, match="cuda_graph=True needs a CUDA device"):
        load_runtime(package, "torch", "cpu", cuda_graph=True)
    with pytest.raises(ValueError, match="runtime 'tensorrt' is not one of"):
        load_runtime(package, "tensorrt")  # type: ignore[arg-type]


# --- ONNX Runtime through IOBinding ---------------------------------------------------------------


@pytest.mark.parametrize("with_map", [False, True], ids=["score", "score+map"])
def test_iobinding_matches_the_cpu_inspector_exactly_over_changing_batch_sizes(
    toy_model_dir: Path, toy_map_model_dir: Path, with_map: bool
) -> None:
    package = load_package(toy_map_model_dir if with_map else toy_model_dir)
    reference = load_model(package, device="cpu")
    runtime = OrtIoBindingRuntime(package, "cpu")
    assert runtime.input_dtype == torch.float32 and runtime.provider == "CPUExecutionProvider"
    storage: dict[int, int] = {}
    for seed, n in enumerate(BATCH_SIZES):
        batch = random_batch(runtime, n, seed)
        outputs = runtime.run_device(batch)
        expected = reference.run(batch.numpy())
        assert list(outputs) == list(expected)
        for name, values in expected.items():
            np.testing.assert_array_equal(outputs[name].numpy(), values)
        # ONNX Runtime wrote into this batch size's own buffer, the same one each time.
        assert storage.setdefault(n, outputs["score"].data_ptr()) == outputs["score"].data_ptr()
        poison(outputs)


def test_iobinding_learns_output_shapes_the_graph_leaves_symbolic(tmp_path: Path) -> None:
    nodes = [
        helper.make_node("Squeeze", ["image", "channel_axis"], ["anomaly_map"]),
        helper.make_node("ReduceMax", ["image", "all_axes"], ["score"], keepdims=0),
    ]
    outputs = [
        helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch"]),
        helper.make_tensor_value_info("anomaly_map", TensorProto.FLOAT, ["batch", "height", "width"]),
    ]
    package = toy_graph_package(tmp_path / "symbolic", outputs, nodes, map_output="anomaly_map")
    runtime = OrtIoBindingRuntime(package, "cpu")
    for seed, n in enumerate(BATCH_SIZES):
        batch = random_batch(runtime, n, seed)
        outputs_now = runtime.run_device(batch)
        np.testing.assert_array_equal(outputs_now["anomaly_map"].numpy(), batch.numpy()[:, 0])
        np.testing.assert_array_equal(outputs_now["score"].numpy(), batch.numpy().max(axis=(1, 2, 3)))
        poison(outputs_now)


@pytest.mark.parametrize("runtime_class", [OrtIoBindingRuntime, TorchRuntime], ids=["ort", "torch"])
def test_runtimes_refuse_a_batch_they_cannot_take(toy_map_model_dir: Path, runtime_class: type) -> None:
    runtime = runtime_class(load_package(toy_map_model_dir), "cpu")
    batch = random_batch(runtime, 2, 0)
    with pytest.raises(
        TypeError, match=r"input 'image' is float32 but the batch is float16.*out_dtype=torch\.float32"
    ):
        runtime.run_device(batch.half())
    with pytest.raises(ValueError, match=r"shape \(2, 1, 16, 32\) does not fit .* \['N', 1, 32, 32\]"):
        runtime.run_device(batch[:, :, :16])
    with pytest.raises(ValueError, match=r"shape \(0, 1, 32, 32\)"):
        runtime.run_device(batch[:0])
    with pytest.raises(ValueError, match="the batch is on meta but this runtime runs on cpu"):
        runtime.run_device(torch.empty(batch.shape, device="meta"))


def test_check_batch_reads_dims_the_graph_leaves_open() -> None:
    spec = TensorSpec("image", torch.float16, (None, 3, None, None))
    check_batch(torch.zeros(2, 3, 7, 9, dtype=torch.float16), spec, torch.device("cpu"))
    with pytest.raises(ValueError, match=r"\['N', 3, '\?', '\?'\]"):
        check_batch(torch.zeros(2, 1, 7, 9, dtype=torch.float16), spec, torch.device("cpu"))


# --- torch (onnx2torch) ---------------------------------------------------------------------------


def assert_runtimes_agree(
    torch_outputs: dict[str, torch.Tensor], ort_outputs: dict[str, torch.Tensor]
) -> None:
    """Scores within 1e-4 relative; maps within 1e-3 of their peak (the units postprocessing thresholds)."""
    assert list(torch_outputs) == list(ort_outputs)
    [score_name, *map_names] = list(ort_outputs)
    got, want = torch_outputs[score_name].cpu().numpy(), ort_outputs[score_name].cpu().numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=0)
    for name in map_names:
        got, want = torch_outputs[name].cpu().numpy(), ort_outputs[name].cpu().numpy()
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-3 * float(np.abs(want).max()))


def check_torch_against_ort(package: ModelPackage) -> None:
    ort_runtime = OrtIoBindingRuntime(package, "cpu")
    torch_runtime = TorchRuntime(package, "cpu")
    assert torch_runtime.output_names == ort_runtime.output_names
    for seed, n in enumerate(BATCH_SIZES[:3]):
        batch = random_batch(ort_runtime, n, seed)
        assert_runtimes_agree(torch_runtime.run_device(batch), ort_runtime.run_device(batch))


@pytest.mark.parametrize("with_map", [False, True], ids=["score", "score+map"])
def test_torch_runtime_matches_onnx_runtime_on_the_toy_models(
    toy_model_dir: Path, toy_map_model_dir: Path, with_map: bool
) -> None:
    check_torch_against_ort(load_package(toy_map_model_dir if with_map else toy_model_dir))


def test_torch_runtime_matches_onnx_runtime_on_exported_models(exported: ModelPackage) -> None:
    check_torch_against_ort(exported)


def test_torch_module_keeps_its_shape_arithmetic_on_the_host(exported: ModelPackage) -> None:
    """With the weights on a device and integer constants on the host, a run must never read a device tensor
    on the host nor mix host and device tensors: that is what lets a CUDA graph capture it. The meta device
    stands in for the GPU: reading a meta tensor's values fails, as does mixing it with host tensors."""
    from onnx2torch.node_converters.shape import OnnxShape

    runtime = TorchRuntime(exported, "cpu")
    modules = list(runtime.module.modules())
    shape_nodes = [n for n in onnx.load(str(exported.onnx_path)).graph.node if n.op_type == "Shape"]
    assert not any(isinstance(m, OnnxShape) for m in modules)
    assert sum(isinstance(m, HostShape) for m in modules) == len(shape_nodes)
    place(runtime.module, torch.device("meta"))
    with torch.inference_mode():
        result = runtime.module(torch.empty((2, 3, EXPORT_SIZE, EXPORT_SIZE), device="meta"))
    values = (result,) if isinstance(result, torch.Tensor) else tuple(result)
    assert [v.device.type for v in values] == ["meta"] * len(values)
    assert values[0].shape == (2,)


# --- lowering for onnx2torch ----------------------------------------------------------------------


def test_exported_graphs_are_lowered_to_opset_17_without_reduce_axes_inputs(exported: ModelPackage) -> None:
    original = onnx.load(str(exported.onnx_path))
    lowered = lower_for_onnx2torch(original)
    assert [o.version for o in lowered.opset_import if o.domain == ""] == [TARGET_OPSET]
    assert original.opset_import[0].version == 20
    for node in lowered.graph.node:
        if node.op_type in ("ReduceMean", "ReduceMax"):
            assert len(node.input) == 1 and any(a.name == "axes" for a in node.attribute)
        if node.op_type == "Reshape":
            assert not any(a.name == "allowzero" and a.i for a in node.attribute)


RUNTIME_AXES = helper.make_tensor_value_info("axes", TensorProto.INT64, [2])
REFUSED = {
    "resize-antialias": (
        single_node_model(
            helper.make_node("Resize", ["x", "", "scales"], ["y"], mode="linear", antialias=1),
            [float_input()],
            floats={"scales": [1, 1, 2, 2]},
        ),
        "antialias=1",
    ),
    "pad-wrap": (
        single_node_model(
            helper.make_node("Pad", ["x", "pads"], ["y"], mode="wrap"),
            [float_input()],
            ints={"pads": [0, 0, 1, 1, 0, 0, 1, 1]},
        ),
        "mode 'wrap'",
    ),
    "pool-dilations": (
        single_node_model(
            helper.make_node("AveragePool", ["x"], ["y"], kernel_shape=[2, 2], dilations=[2, 2]),
            [float_input()],
        ),
        "dilations",
    ),
    "reduce-noop": (
        single_node_model(
            helper.make_node("ReduceMean", ["x"], ["y"], noop_with_empty_axes=1), [float_input()]
        ),
        "noop_with_empty_axes=1",
    ),
    "reduce-runtime-axes": (
        single_node_model(
            helper.make_node("ReduceMean", ["x", "axes"], ["y"]), [float_input(), RUNTIME_AXES]
        ),
        "axes is computed at run time",
    ),
    "reshape-zero": (
        single_node_model(
            helper.make_node("Reshape", ["x", "shape"], ["y"], allowzero=1),
            [float_input()],
            ints={"shape": [1, 0, 16]},
        ),
        "allowzero=1 with a 0 in the target shape",
    ),
    "newer-op": (
        single_node_model(
            helper.make_node("GridSample", ["x", "grid"], ["y"]),
            [float_input(), float_input("grid", (1, 4, 4, 2))],
        ),
        "GridSample.*opset-20 revision has no known opset-17 equivalent",
    ),
}


@pytest.mark.parametrize("case", list(REFUSED), ids=list(REFUSED))
def test_lowering_refuses_by_name_what_opset_17_cannot_say(case: str) -> None:
    model, message = REFUSED[case]
    with pytest.raises(UnsupportedGraphError, match=f"{message}.*runtime='ort'"):
        lower_for_onnx2torch(model)


def test_an_op_onnx2torch_lacks_is_a_named_error() -> None:
    model = single_node_model(helper.make_node("Hardmax", ["x"], ["y"]), [float_input()])
    with pytest.raises(UnsupportedGraphError, match=r"onnx2torch .* cannot convert .*Hardmax.*runtime='ort'"):
        convert(lower_for_onnx2torch(model))


def test_outputs_of_one_node_are_refused() -> None:
    split = helper.make_node("Split", ["x"], ["top", "bottom"], axis=2)
    outputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in ("top", "bottom")]
    graph = helper.make_graph([split], "split", [float_input()], outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(UnsupportedGraphError, match=r"\['top', 'bottom'\] are not each the single output"):
        check_output_producers(model)


# --- on a GPU -------------------------------------------------------------------------------------


@pytest.mark.gpu
@needs_cuda
def test_onnx_runtime_session_runs_on_the_runtime_stream(toy_map_model_dir: Path) -> None:
    runtime = OrtIoBindingRuntime(load_package(toy_map_model_dir), "cuda")
    assert runtime.provider == "CUDAExecutionProvider" and runtime.stream is not None
    options = runtime.session.get_provider_options()["CUDAExecutionProvider"]
    assert options["user_compute_stream"] == str(runtime.stream.cuda_stream)
    assert options["has_user_compute_stream"] == "1"


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("kind", ["ort", "torch", "torch-graph"])
def test_inference_waits_for_the_kernel_that_writes_the_batch(toy_map_model_dir: Path, kind: str) -> None:
    package = load_package(toy_map_model_dir)
    runtime = load_runtime(
        package, "ort" if kind == "ort" else "torch", "cuda", cuda_graph=kind == "torch-graph"
    )
    producer = torch.cuda.Stream()
    for n in BATCH_SIZES:
        values = torch.rand((n, 1, TOY_SIZE, TOY_SIZE), device="cuda")
        batch = torch.zeros_like(values)
        torch.cuda.synchronize()
        with torch.cuda.stream(producer):
            # The batch is written only after ~50 ms of GPU time: a runtime that does not wait reads zeros.
            torch.cuda._sleep(100_000_000)
            batch.copy_(values)
            outputs = runtime.run_device(batch)
            scores, maps = fetch_outputs(outputs, "score", "anomaly_map", range(n))
        expected = values.cpu().numpy()
        np.testing.assert_array_equal(np.stack([maps[i] for i in range(n)]), expected[:, 0])
        np.testing.assert_array_equal(scores, expected.max(axis=(1, 2, 3)))


@pytest.mark.gpu
@needs_cuda
def test_kernel_output_through_both_runtimes_matches_the_cpu_inspector(exported: ModelPackage) -> None:
    from edge_inspect.kernels import preprocess_batch_gpu

    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in [(80, 96), (64, 64), (120, 70)]]
    recipe = exported.card.preprocess
    expected = load_model(exported, device="cpu").run(preprocess_batch(frames, recipe))
    for runtime in (
        load_runtime(exported, "ort", "cuda"),
        load_runtime(exported, "torch", "cuda"),
        load_runtime(exported, "torch", "cuda", cuda_graph=True),
    ):
        batch = preprocess_batch_gpu(frames, recipe, out_dtype=runtime.input_dtype, device=runtime.device)
        outputs = runtime.run_device(batch)
        assert all(t.device.type == "cuda" for t in outputs.values())
        card = exported.card
        scores, maps = fetch_outputs(outputs, card.score_output, card.map_output, [1])
        # TF32 convolutions (the default of both runtimes on Ampere and later) keep about 1e-3.
        np.testing.assert_allclose(scores, expected[card.score_output], rtol=2e-3, atol=2e-3)
        if card.map_output:
            want = expected[card.map_output][1]
            np.testing.assert_allclose(maps[1], want, rtol=0, atol=2e-3 * float(np.abs(want).max()))


@pytest.mark.gpu
@needs_cuda
def test_cuda_graph_replays_match_eager_runs_over_changing_batch_sizes(exported: ModelPackage) -> None:
    eager = TorchRuntime(exported, "cuda")
    graphed = TorchRuntime(exported, "cuda", cuda_graph=True)
    for seed, n in enumerate(BATCH_SIZES):
        batch = random_batch(eager, n, seed)
        replayed = graphed.run_device(batch)
        assert_runtimes_agree(replayed, eager.run_device(batch))
        poison(replayed)
    assert sorted(shape[0] for shape in graphed._graphs) == sorted(set(BATCH_SIZES))
