"""What a sandboxed process runs as. The drop itself happens in wc-init's exec child
(setgroups/setresgid/setresuid, every capability including the bounding set, no_new_privs,
a seccomp deny-list, RLIMIT_CORE 0 and a bounded RLIMIT_NOFILE); this module holds the
policy; python-prctl checks the service's own capabilities at start-up."""

from __future__ import annotations

from dataclasses import dataclass

# Syscalls the seccomp filter in native/wc-init.c makes fail with EPERM (clone3 gets
# ENOSYS so libc falls back to clone, whose namespace flags are refused).
DENIED_SYSCALLS = (
    "mount", "umount2", "pivot_root", "unshare", "setns", "ptrace", "process_vm_readv",
    "process_vm_writev", "kexec_load", "kexec_file_load", "init_module", "finit_module",
    "delete_module", "bpf", "perf_event_open", "keyctl", "add_key", "request_key",
    "open_by_handle_at", "name_to_handle_at", "swapon", "swapoff", "reboot", "acct", "quotactl",
    "syslog", "userfaultfd", "io_uring_setup", "io_uring_enter", "io_uring_register", "open_tree",
    "move_mount", "fsopen", "fsconfig", "fsmount", "fspick", "mount_setattr", "vhangup",
)  # fmt: skip


@dataclass(frozen=True)
class ProcessIdentity:
    uid: int = 65534
    gid: int = 65534
    max_open_files: int = 1024  # RLIMIT_NOFILE; memory is capped by the cgroup, never RLIMIT_AS

    def exec_args(self) -> list[str]:
        return ["--uid", str(self.uid), "--gid", str(self.gid), "--nofile", str(self.max_open_files)]
