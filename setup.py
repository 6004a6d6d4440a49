"""Packaging for WonderCraft: the service, the admin tool and the runtime."""

from setuptools import setup

VERSION = "0.1.0"

setup(
    name="wondercraft",
    version=VERSION,
    description="Sandbox runtime and federated-training service for bare-metal GPU hosts",
    python_requires=">=3.11",
    packages=[
        "runtime",
        "runtime.cgroups",
        "native",
        "server",
        "aggregation",
        "rootfs",
    ],
    package_data={"rootfs": ["*.md", "*.json"], "server": ["*.json", "*.yaml"]},
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
    ],
    extras_require={
        "test": [
            "pytest>=8",
            "pytest-timeout>=2.3",
            "hypothesis>=6.100",
            "ruff>=0.6",
            "schemathesis>=3.30",
            "scikit-learn>=1.4",
        ],
        "bench": [
            "flwr>=1.8",
        ],
    },
    entry_points={
        "console_scripts": [
            "wondercraft=server.cli:main",
            "wondercraft-ctl=server.ctl:main",
        ],
    },
)
