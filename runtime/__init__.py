"""Sandbox runtime: Linux namespaces, cgroups, overlay roots and network namespaces,
composed into one Sandbox type. Nothing here knows about HTTP."""
