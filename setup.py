"""ft_keras: Factor Transfer knowledge distillation for Keras 3 / TensorFlow."""

import pathlib

from setuptools import find_packages
from setuptools import setup

HERE = pathlib.Path(__file__).parent


def _version():
    for line in (HERE / "ft_keras" / "__init__.py").read_text().splitlines():
        if line.startswith("__version__"):
            return line.split("=")[1].strip().strip('"')
    raise RuntimeError("ft_keras/__init__.py has no __version__ line.")


setup(
    name="ft_keras",
    version=_version(),
    description=(
        "Factor Transfer (Kim, Park & Kwak, NeurIPS 2018) knowledge "
        "distillation for Keras 3 and TensorFlow."
    ),
    long_description=(HERE / "README.md").read_text(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["ft_keras", "ft_keras.*"]),
    include_package_data=True,
    install_requires=[
        "tensorflow>=2.21,<2.22",
        "keras>=3.15,<4",
        "tensorflow-datasets>=4.9.10,<4.10",
        # tensorflow-datasets 4.9.10 imports it without declaring it.
        "importlib_resources>=6",
        "gin-config>=0.5,<0.6",
        "absl-py>=2.1",
        # TensorFlow 2.21 no longer installs it; the runner logs to it.
        "tensorboard>=2.19",
        "scikit-learn>=1.4",
        "numpy>=1.26",
    ],
    extras_require={
        # matplotlib: ft_keras.report and benchmarks/reproduce.py draw the
        # accuracy curves. jax (CPU, ~90 MB of wheels): tests/test_backends.py runs the core
        # on the JAX backend too.
        "test": [
            "pytest>=8",
            "pytest-timeout>=2.3",
            # The README's test command runs the test files on two workers.
            "pytest-xdist>=3.5",
            "matplotlib>=3.8",
            "jax[cpu]>=0.10.2,<0.11",
            "tf2onnx>=1.17",
            "onnx>=1.17",
            "onnxruntime>=1.20",
            "ai-edge-litert>=2.0",
            # tests/test_keras_hub.py: KerasHub networks, as the extra below.
            "keras-hub==0.32.0",
        ],
        # The export stage's ONNX file (tf2onnx, onnx), and the runtimes
        # that run the exported files: ONNX Runtime and LiteRT.
        "export": [
            "tf2onnx>=1.17",
            "onnx>=1.17",
            "onnxruntime>=1.20",
            "ai-edge-litert>=2.0",
        ],
        # python -m ft_keras.report draws its plots with it.
        "report": ["matplotlib>=3.8"],
        # The other Keras backends the core (layers, losses, distiller,
        # models) runs on, CPU builds. torch is pinned to 2.13.0, whose CPU
        # wheel (2.13.0+cpu) the project's machines keep in pip's
        # find-links; a torch resolved from PyPI alone is the CUDA build
        # (several GB).
        "backends": ["jax[cpu]>=0.10.2,<0.11", "torch==2.13.0"],
        # PyTorch checkpoints as teachers (ft_keras.models.torch_import,
        # python -m ft_keras.import_torch, a .pth experiment.teacher_checkpoint):
        # torch reads the file. Pinned as in `backends`, whose CPU wheel
        # (2.13.0+cpu) the project's machines keep in pip's find-links.
        "torch": ["torch==2.13.0"],
        # torch: the PyTorch peer of benchmarks/throughput.py --vs_pytorch
        # (benchmarks/torch_peer.py); the CPU wheel, as for `backends`.
        "benchmarks": ["matplotlib>=3.8", "torch==2.13.0"],
        "keras-cv": ["keras-cv>=0.9"],
        # KerasHub image networks by name ("keras_hub.<ClassName>",
        # ft_keras.models.keras_hub); pinned, as KERAS_HUB_VERSION there.
        "keras-hub": ["keras-hub==0.32.0"],
    },
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
