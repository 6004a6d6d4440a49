"""`wondercraft-ctl`, the admin tool: one module per command group, `client.py` for the HTTP
client, token discovery and exit statuses, `output.py` for tables and --json. It needs only the
standard library and click, so it installs without the service's numeric stack."""

from importlib import metadata

try:
    VERSION = metadata.version("wondercraft")
except metadata.PackageNotFoundError:  # running from a source tree without install
    VERSION = "0.0.0+source"
