"""The WonderCraft service: aiohttp app, configuration, state store and CLI."""

from importlib import metadata

try:
    VERSION = metadata.version("wondercraft")
except metadata.PackageNotFoundError:  # running from a source tree without install
    VERSION = "0.0.0+source"
