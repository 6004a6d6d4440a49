"""Syscall bindings the standard library lacks (mount, pivot_root, unshare, setns...)."""
