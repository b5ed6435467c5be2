"""Measures what `export_student` wrote: size, accuracy, latency, speed.

`measure_export(export_dir, dataset)` runs every file of an export directory
in the runtime that serves it (the SavedModel in TensorFlow, the LiteRT files
in the LiteRT runtime, the ONNX file in ONNX Runtime) on the full test split
of `dataset`, fed as the raw uint8 images a deployment feeds them, and
returns, per file, its size, its top-1 accuracy, its batch-1 latency and its
throughput, plus the student's parameters and multiply-accumulates
(`count_macs`) and the machine and runtime versions the figures came from.

The test split is read back at the raw pixel scale (`ft_keras.export.pixels`)
the way `ft_keras.export.representative_images` reads the training split,
and `tests/test_measure.py` checks that both give the same images in the
same order.
"""

import importlib.metadata
import os
import platform
import statistics
import time

import keras
import numpy as np

from ft_keras import _keras_private
from ft_keras import data
from ft_keras import models
from ft_keras import precision
from ft_keras.export.pixels import normalization
from ft_keras.export.pixels import to_raw
from ft_keras.export.serving import SERVING

# The files `measure_export` runs, in the order it reports them.
FILES = {
    "saved_model": "saved_model",
    "tflite_float": "student_float.tflite",
    "tflite_int8": "student_int8.tflite",
    "tflite_int8_full": "student_int8_full.tflite",
    "onnx": "student.onnx",
}

_INSTALL = "pip install 'ft_keras[export]'"


def _spatial(layer, shape):
    """Height times width of a convolution's 4-D input or output shape."""
    if getattr(layer, "data_format", None) == "channels_first":
        return int(np.prod(shape[2:]))
    return int(np.prod(shape[1:-1]))


def _layer_macs(layer):
    """Multiply-accumulates per image of one layer (0 for the others)."""
    if isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D)):
        # Conv2D (grouped too): kh*kw*(cin/groups)*cout per output pixel;
        # DepthwiseConv2D: kh*kw*cin*multiplier per output pixel.
        return _spatial(layer, layer.output.shape) * int(np.prod(layer.kernel.shape))
    if isinstance(layer, keras.layers.SeparableConv2D):
        per_pixel = np.prod(layer.depthwise_kernel.shape) + np.prod(
            layer.pointwise_kernel.shape
        )
        return _spatial(layer, layer.output.shape) * int(per_pixel)
    if isinstance(layer, keras.layers.Conv2DTranspose):
        # Each input pixel scatters a kh*kw*cout*cin kernel.
        return _spatial(layer, layer.input.shape) * int(np.prod(layer.kernel.shape))
    if isinstance(layer, keras.layers.Dense):
        positions = int(np.prod(layer.input.shape[1:-1]))
        return positions * int(np.prod(layer.kernel.shape))
    return 0


def count_macs(model):
    """Multiply-accumulates per image of a Keras model's convolutions and
    dense layers, from their kernels and the shapes they were called on.

    Counts `Conv2D` (grouped too), `DepthwiseConv2D`, `SeparableConv2D`,
    `Conv2DTranspose` and `Dense` layers at any depth (nested models, and
    the convolution inside `ft_keras.models.FoldedConv2D`, which counts as
    the conv it folds). Biases, normalisations, activations, pooling and
    additions are not counted. A layer called more than once (shared) is an
    error: its calls cannot be told apart.

    Args:
        model: A built Keras model whose layers were called once each (every
            `ft_keras.models.get` network).

    Returns:
        An int.

    Example:

    ```python
    import keras
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(4, 3, padding="same")(inputs)  # 8*8*3*3*1*4
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(10)(x))  # 4*10
    count_macs(model)  # 2344
    ```
    """
    total = 0
    for layer in _keras_private.nested_layers(model):
        try:
            total += _layer_macs(layer)
        except (AttributeError, ValueError) as error:
            raise ValueError(
                f"count_macs needs each layer called once on a known shape; "
                f"{layer.name!r} is not ({error}). Count a model built "
                "with keras.Input, without shared layers."
            ) from None
    return total


def read_test_split(dataset, eval_options=None, data_dir=None, batch_size=256):
    """`(images, labels)`: the whole test split of `dataset` as the test
    pipeline yields it, its images back at the raw pixel scale as uint8
    (what `ft_keras.export.representative_images(dataset, count=n,
    split="test")` returns, in the same order) and its int labels.

    Example:

    ```python
    images, labels = read_test_split("digits")
    images.shape, images.dtype, labels.shape   # (360, 8, 8, 1), uint8, (360,)
    ```
    """
    options = dict(eval_options or {})
    pixel_max, mean, std = normalization(dataset, options)
    batches = data.build_dataset(
        dataset, "test", batch_size=batch_size, training=False,
        data_dir=data_dir, cache=False, **options,
    )
    images, labels = [], []
    for x, y in batches:
        images.append(to_raw(x, pixel_max, mean, std))
        y = np.asarray(y)
        labels.append(y.argmax(-1) if y.ndim == 2 else y)
    return np.concatenate(images), np.concatenate(labels).astype(np.int64)


def _missing_runtime(what, package):
    return ImportError(
        f"Measuring {what} needs {package}: {_INSTALL}."
    )


def _saved_model_runner(path, threads):
    import tensorflow as tf

    del threads  # TensorFlow's thread pools are fixed when it starts.
    serve = tf.saved_model.load(os.fspath(path)).signatures[SERVING]
    # 0: TensorFlow's default, one intra-op thread per usable core.
    used = tf.config.threading.get_intra_op_parallelism_threads()
    return (
        lambda images: serve(images=tf.constant(images))["logits"].numpy(),
        used or machine()["usable_cores"],
    )


def _tflite_runner(path, threads):
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        raise _missing_runtime(os.path.basename(path), "the LiteRT runtime "
                               "(ai-edge-litert)") from None
    interpreter = Interpreter(model_path=os.fspath(path), num_threads=threads)
    runner = interpreter.get_signature_runner(SERVING)
    scale, zero_point = runner.get_output_details()["logits"]["quantization"]

    def run(images):
        logits = runner(images=images)["logits"]
        if scale:  # A quantized output: back to float logits.
            return (logits.astype(np.float32) - zero_point) * scale
        return logits

    return run, threads


def _onnx_runner(path, threads):
    try:
        import onnxruntime
    except ImportError:
        raise _missing_runtime("student.onnx", "ONNX Runtime (onnxruntime)"
                               ) from None
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(
        os.fspath(path), options, providers=["CPUExecutionProvider"]
    )
    return lambda images: session.run(["logits"], {"images": images})[0], threads


_RUNNERS = {
    "saved_model": _saved_model_runner,
    "tflite_float": _tflite_runner,
    "tflite_int8": _tflite_runner,
    "tflite_int8_full": _tflite_runner,
    "onnx": _onnx_runner,
}


def size_bytes(path):
    """A file's size in bytes, or the total of a folder's files."""
    if not os.path.isdir(path):
        return os.path.getsize(path)
    return sum(
        os.path.getsize(os.path.join(root, name))
        for root, _, names in os.walk(path)
        for name in names
    )


def _seconds(run, images, repeats, warmup):
    for _ in range(warmup):
        run(images)
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        run(images)
        seconds.append(time.perf_counter() - start)
    return seconds


def _measure_file(run, images, labels, latency_runs, batch):
    """One file's top-1 accuracy, batch-1 latency and batch throughput."""
    predictions = np.concatenate(
        [run(images[i:i + batch]).argmax(-1) for i in range(0, len(images), batch)]
    )
    warmup = max(3, latency_runs // 10)
    latency = np.asarray(
        _seconds(run, images[:1], latency_runs, warmup)
    ) * 1000
    batch_images = np.resize(images, (batch,) + images.shape[1:])
    per_batch = statistics.median(
        _seconds(run, batch_images, max(3, latency_runs // 5), warmup)
    )
    return {
        "top1": float(np.mean(predictions == labels)),
        "latency_ms": {
            "median": float(np.median(latency)),
            "p90": float(np.percentile(latency, 90)),
        },
        "images_per_second": batch / per_batch,
    }


def machine():
    """The CPU model, its flags that matter for int8 and bfloat16 speed
    (`amx`, `avx512_bf16`, `avx512_vnni`, `avx2`, from `/proc/cpuinfo`) and
    its cores, as a JSON-serialisable dict."""
    model, flags = precision.read_cpuinfo()
    model = model or platform.processor() or platform.machine()
    flags = flags or set()  # Not Linux: no flags.
    usable = (len(os.sched_getaffinity(0))
              if hasattr(os, "sched_getaffinity") else os.cpu_count())
    return {
        "cpu": model,
        "flags": {
            "amx": "amx_tile" in flags,
            "avx512_bf16": "avx512_bf16" in flags,
            "avx512_vnni": "avx512_vnni" in flags,
            "avx2": "avx2" in flags,
        },
        "cores": os.cpu_count(),
        "usable_cores": usable,
    }


def runtime_versions():
    """`{package: version or None}` of the runtimes `measure_export` uses."""
    versions = {}
    for package in ("tensorflow", "ai-edge-litert", "onnxruntime"):
        try:
            versions[package.replace("-", "_")] = importlib.metadata.version(
                package
            )
        except importlib.metadata.PackageNotFoundError:
            versions[package.replace("-", "_")] = None
    return versions


def _student(path):
    student = keras.saving.load_model(path, compile=False)
    return {
        "size_bytes": size_bytes(path),
        "params": int(student.count_params()),
        "macs": count_macs(student),
    }


def _present_files(export_dir):
    """`{key: path}` of the `FILES` in `export_dir`; an error if none."""
    present = {
        key: os.path.join(export_dir, name)
        for key, name in FILES.items()
        if os.path.exists(os.path.join(export_dir, name))
    }
    if not present:
        raise FileNotFoundError(
            f"No exported file in {export_dir!r}: write them with "
            "ft_keras.export.export_for_dataset first."
        )
    return present


def measure_export(export_dir, dataset, eval_options=None, data_dir=None,
                   latency_runs=50, batch=32, threads=None):
    """Size, top-1 accuracy, latency and throughput of each exported file.

    Each file `export_student` wrote that is in `export_dir` runs in its own
    runtime: `saved_model/` in TensorFlow (its thread pools as TensorFlow
    started them), the `.tflite` files in the LiteRT runtime
    (`num_threads=threads`, XNNPACK as LiteRT picks it), `student.onnx` in
    ONNX Runtime's CPU provider (`intra_op_num_threads=threads`). Each is fed
    the full test split of `dataset` as raw uint8 images (`read_test_split`)
    in batches of `batch` for accuracy; a quantized output is dequantized
    with its scale and zero point before the argmax.

    Args:
        export_dir: A directory of `export_student` / `export_for_dataset`.
        dataset: The `build_dataset` name the student was trained on.
        eval_options: The test split's `build_dataset` options, as given to
            `export_for_dataset`.
        data_dir: TFDS's data directory.
        latency_runs: Timed batch-1 runs per file, after
            `max(3, latency_runs // 10)` warm-up runs; throughput times
            `max(3, latency_runs // 5)` batches of `batch`.
        batch: The batch of the accuracy pass and the throughput figure.
        threads: Threads of LiteRT and ONNX Runtime (default: the usable
            cores).

    Returns:
        A JSON-serialisable dict: `dataset`, `test_images`, `batch`,
        `latency_runs`, `threads`, `machine` (`machine()`), `runtimes`
        (`runtime_versions()`), `student` (`size_bytes`, `params`, `macs`
        of `student.keras`, if present) and `files`: for each present file
        of `FILES`, `{"file", "size_bytes", "threads", "top1", "latency_ms":
        {"median", "p90"}, "images_per_second"}`.

    Raises:
        ImportError: a file's runtime is not installed (one line naming
            `pip install 'ft_keras[export]'`).
        FileNotFoundError: `export_dir` holds none of the files.

    Example:

    ```python
    from ft_keras import export
    export.export_for_dataset(student, "digits", "export", full_integer=True)
    report = export.measure_export("export", "digits", latency_runs=20)
    report["files"]["tflite_int8_full"]["top1"]
    ```
    """
    export_dir = os.fspath(export_dir)
    present = _present_files(export_dir)
    threads = threads or machine()["usable_cores"]
    runners = {key: _RUNNERS[key](path, threads) for key, path in present.items()}
    images, labels = read_test_split(dataset, eval_options, data_dir)
    files = {key: _file_result(key, present[key], runner, images, labels,
                               latency_runs, batch)
             for key, runner in runners.items()}
    # After the timings: `_environment` loads the student.
    return {"dataset": dataset, "test_images": int(len(labels)), "batch": batch,
            "latency_runs": latency_runs, "threads": threads,
            **_environment(export_dir), "files": files}


def _file_result(key, path, runner, images, labels, latency_runs, batch):
    """`measure_export`'s figures of one file, run by `runner`, a `(run,
    threads used)` of `_RUNNERS`."""
    run, used = runner
    return {
        "file": FILES[key],
        "size_bytes": size_bytes(path),
        "threads": used,
        **_measure_file(run, images, labels, latency_runs, batch),
    }


def _environment(export_dir):
    """`measure_export`'s `machine`, `runtimes` and `student`."""
    keras_path = os.path.join(export_dir, "student.keras")
    return {
        "machine": machine(),
        "runtimes": runtime_versions(),
        "student": _student(keras_path) if os.path.exists(keras_path) else None,
    }
