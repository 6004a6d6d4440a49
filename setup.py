"""Packaging for WonderCraft: the service, the admin tool and the runtime."""

import importlib.util
from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

VERSION = "0.1.0"
HERE = Path(__file__).resolve().parent


def _native():
    # native/__init__.py has no third-party imports, so it loads before dependencies exist.
    spec = importlib.util.spec_from_file_location("_wc_native", HERE / "native" / "__init__.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class BuildWithLauncher(build_py):
    """Compiles native/wc-init.c: in place for editable installs, into the build tree otherwise."""

    def run(self):
        super().run()
        native = _native()
        if getattr(self, "editable_mode", False):
            native.build_launcher(HERE / "native" / native.LAUNCHER_NAME)
        else:
            native.build_launcher(Path(self.build_lib) / "native" / native.LAUNCHER_NAME)


setup(
    name="wondercraft",
    version=VERSION,
    description="Sandbox runtime and federated-training service for bare-metal GPU hosts",
    python_requires=">=3.11",
    packages=find_packages(include=["runtime*", "native", "server*", "aggregation", "rootfs", "ctl"]),
    package_data={
        "native": ["wc-init.c"],
        "rootfs": ["*.md", "*.json", "*.py"],
        "server": ["*.json", "*.yaml"],
        "server.dashboard": ["static/*", "web/package.json", "web/package-lock.json"],
    },
    cmdclass={"build_py": BuildWithLauncher},
    install_requires=[
        "aiohttp>=3.9",
        "pyroute2>=0.7",
        "python-prctl>=1.8",
        "cgroupspy>=0.2",
        "numba>=0.60",
        "numpy>=1.26",
        "onnxruntime-gpu>=1.18",
        "onnx>=1.16",
        "click>=8.1",
        "prometheus-client>=0.20",
        "jsonschema>=4.21",
        "jsonschema-rs>=0.20",
        "orjson>=3.9",
        # Tensors crossing a trust boundary (learn-cycle outputs, uploads) are read as
        # safetensors, never as pickles.
        "safetensors>=0.4",
        # Differential privacy accounting (Google's RDP accountant): the noise multiplier that
        # meets a model's (epsilon, delta) budget and the epsilon each round spends.
        "dp-accounting>=0.4",
    ],
    extras_require={
        "test": [
            "pytest>=8",
            "pytest-timeout>=2.3",
            "hypothesis>=6.100",
            "ruff>=0.6",
            "schemathesis>=3.30",
            "scikit-learn>=1.4",
            # Drives Debian's chromium for the dashboard's browser tests.
            "playwright>=1.45",
            # The cluster tests (tests/test_fleet_ray.py) start a real Ray head and nodes.
            "ray[default]>=2.52,<3",
        ],
        # Learn cycles across hosts (WONDERCRAFT_EXECUTOR=ray): Ray's scheduler, object store
        # and token auth, on the service and on every node.
        "ray": [
            "ray[default]>=2.52,<3",
        ],
        # PyTorch learn programs (the CPU build is enough for the suite).
        "torch": [
            "torch==2.13.0",
        ],
        "bench": [
            "flwr>=1.8",
        ],
    },
    entry_points={
        "console_scripts": [
            "wondercraft=server.cli:main",
            "wondercraft-ctl=ctl.main:main",
        ],
    },
)
