"""A warm sandbox's zygote: imports the libraries a learn cycle needs, says so on stderr,
then waits for exactly one job on stdin and runs it in this same interpreter.

Started by runtime/pool.py as the sandbox's own uid, its capabilities dropped and its
seccomp filter on (wc-init exec, like every sandbox process). The job is one JSON line:
{"argv": [...], "env": {...}, "cwd": "/work"}. A `python SCRIPT`, `python -m MODULE` or
`python -c CODE` command runs through runpy with sys.argv, the environment and the cwd
set as a fresh interpreter would have them; anything else is exec'd as is. The sandbox is
destroyed after this one job, so nothing of it outlives the cycle.

Variables read only at interpreter start (PYTHONHASHSEED, PYTHONOPTIMIZE...) keep the
zygote's values; PYTHONPATH is applied to sys.path."""

import atexit
import gc
import importlib
import json
import os
import runpy
import sys
import threading
import traceback

READY = b"wondercraft-zygote: ready\n"
MAX_JOB_BYTES = 1 << 20
PYTHONS = {"python", "python3", f"python{sys.version_info[0]}.{sys.version_info[1]}"}
IGNORED_FLAGS = {"-u", "-B", "-E", "-s"}  # harmless to skip in an already running interpreter


def read_job() -> dict | None:
    data = b""
    while not data.endswith(b"\n") and len(data) <= MAX_JOB_BYTES:
        chunk = os.read(0, 65536)
        if not chunk:
            break
        data += chunk
    return json.loads(data) if data.strip() else None


def python_command(argv: list) -> list | None:
    """The arguments after the interpreter when argv runs this Python; None otherwise."""
    if not argv or os.path.basename(argv[0]) not in PYTHONS and argv[0] != sys.executable:
        return None
    rest = list(argv[1:])
    while rest and rest[0] in IGNORED_FLAGS:
        rest.pop(0)
    if not rest or rest[0].startswith("-") and rest[0] not in ("-m", "-c"):
        return None
    if rest[0] in ("-m", "-c") and len(rest) < 2:
        return None
    return rest


def main() -> None:
    for name in filter(None, (sys.argv[1] if len(sys.argv) > 1 else "").split(",")):
        importlib.import_module(name)
    # What start-up made is never scanned by the program's garbage collections.
    gc.collect()
    gc.freeze()
    os.write(2, READY)
    job = read_job()
    if job is None:
        return
    devnull = os.open("/dev/null", os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    argv, env = list(job["argv"]), dict(job["env"])
    os.environ.clear()
    os.environ.update(env)
    os.chdir(job.get("cwd") or "/")
    rest = python_command(argv)
    if rest is None:
        os.execvpe(argv[0], argv, env)
    os._exit(finish(run, rest, env))


def finish(runner, rest: list, env: dict) -> int:
    """Run the program and end as the interpreter would (exit status, traceback, atexit
    handlers, non-daemon threads joined, output flushed), without tearing down every
    module: the process ends right after, with the sandbox."""
    try:
        runner(rest, env)
        code = 0
    except SystemExit as exc:
        code = exit_code(exc.code)
    except BaseException:
        traceback.print_exc()
        code = 1
    try:
        threading._shutdown()
        atexit._run_exitfuncs()
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
    except SystemExit as exc:
        code = exit_code(exc.code)
    except BaseException:
        traceback.print_exc()
        code = code or 1
    return code


def exit_code(value) -> int:
    if value is None:
        return 0
    if isinstance(value, int):
        return value & 0xFF
    print(value, file=sys.stderr)
    return 1


def run(rest: list, env: dict) -> None:
    paths = [p for p in env.get("PYTHONPATH", "").split(":") if p]
    sys.path[:] = [*paths, *(p for p in sys.path if p not in paths)]
    if rest[0] == "-c":
        sys.argv = ["-c", *rest[2:]]
        sys.path.insert(0, "")
        namespace = {"__name__": "__main__", "__builtins__": __builtins__}
        exec(compile(rest[1], "<string>", "exec"), namespace)
    elif rest[0] == "-m":
        sys.argv = [rest[1], *rest[2:]]
        sys.path.insert(0, os.getcwd())
        runpy.run_module(rest[1], run_name="__main__", alter_sys=True)
    else:
        sys.argv = rest
        sys.path.insert(0, os.path.dirname(os.path.abspath(rest[0])))
        runpy.run_path(rest[0], run_name="__main__")


if __name__ == "__main__":
    main()
