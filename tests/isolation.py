"""Run a command as if on another machine: no checkout, no shared data, no parent's disk (imported as ``isolation``).

``isolated_command(argv, ...)`` returns an argv that runs ``argv``:

- in a new mount namespace (``unshare -m --propagation private``: nothing leaks back to this machine) where the
  checkout, the folders the virtualenv's editable installs point at, this user's HOME and every folder in ``hide``
  are covered by an empty tmpfs; the virtualenv and the Python install it links to are bound back read-only at
  their own paths (the scripts' shebangs are absolute), the workdir, home and audit log read-write;
- as an unprivileged user (default ``nobody``, 65534) with no supplementary groups and no capabilities
  (``setpriv``), cwd = ``workdir``, HOME / XDG / HF / Prefect / emotion caches / TMPDIR under ``home``;
- with exactly the environment ``env`` plus those (read from a root-only file, not the command line: no secrets
  in ``ps``) and a Python audit hook (``sitecustomize.py`` on PYTHONPATH, inherited by Python children such as
  a worker's flow runs) that appends ``<event>\\t<absolute path>`` for each ``open``, ``os.listdir`` and
  ``os.scandir`` to ``audit_log``.

Limits: Linux, root (mount namespaces, setpriv); files opened by native code (``dlopen``, C libraries) are not in
the audit log (the tmpfs still hides them); folders not hidden (``/tmp``, ``/usr``, other people's folders) stay
readable as for any local user; the runtime folder (script, env file, hook) is left for ``cleanup``.
"""

from __future__ import annotations

import ast
import os
import shlex
import shutil
import sys
import tempfile
from pathlib import Path

NOBODY = 65534
_HOOK = '''\
"""Audit hook of an isolated process: log each opened or listed path (tests/isolation.py)."""
import os
import sys

_fd = os.open(os.environ["EMOTION_AUDIT_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)


def _audit(event, args):
    if event in ("open", "os.listdir", "os.scandir") and args and isinstance(args[0], (str, bytes, os.PathLike)):
        try:
            path = os.path.abspath(os.fsdecode(args[0]))
            os.write(_fd, f"{event}\\t{path}\\n".encode("utf-8", "backslashreplace"))
        except Exception:  # an audit hook must never break the process it watches
            pass


sys.addaudithook(_audit)
'''


def isolated_command(
    argv: list[str],
    *,
    checkout: Path,
    venv: Path,
    workdir: Path,
    home: Path,
    env: dict[str, str],
    audit_log: Path,
    hide: list[Path] | tuple[Path, ...] = (),
    uid: int = NOBODY,
    gid: int = NOBODY,
) -> list[str]:
    """The argv that runs ``argv`` isolated (module docstring); ``Popen`` it as root, any env, any cwd.

    ``workdir``, ``home`` and ``audit_log`` are created and given to ``uid``; ``env`` should name the venv's
    ``bin`` in PATH if the command relies on it. Example::

        cmd = isolated_command([str(venv / "bin" / "prefect"), "worker", "start", "--pool", "iso"],
                               checkout=repo, venv=Path(sys.prefix), workdir=tmp / "w", home=tmp / "h",
                               env={"PREFECT_API_URL": api}, audit_log=tmp / "audit.log", hide=[data_dir])
    """
    if os.geteuid() != 0:
        raise PermissionError("isolated_command needs root (mount namespace, setpriv)")
    venv, python_home = Path(venv).resolve(), Path(os.path.realpath(sys.base_prefix))
    hidden = hidden_folders(checkout, venv, hide)
    for folder in (workdir, home):
        Path(folder).mkdir(parents=True, exist_ok=True)
    Path(audit_log).parent.mkdir(parents=True, exist_ok=True)
    Path(audit_log).touch()

    runtime = Path(tempfile.mkdtemp(prefix="emotion-isolated-"))
    if _under(runtime, hidden):
        raise ValueError(f"the temp folder {runtime} is inside a hidden folder; set TMPDIR elsewhere")
    site = runtime / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(_HOOK)
    for path in (runtime, site):
        path.chmod(0o755)  # the unprivileged user reads the hook; the env file and script stay root's (0600)

    child_env = _child_env(env, home=Path(home).resolve(), venv=venv, site=site, audit_log=Path(audit_log).resolve())
    for path in (workdir, home, audit_log):
        _chown_tree(Path(path), uid, gid)
    env_file = runtime / "env"
    env_file.touch(mode=0o600)
    env_file.write_text("".join(f"export {k}={shlex.quote(v)}\n" for k, v in child_env.items()))

    exposed = [(venv, "ro"), (python_home, "ro")] + [(Path(p).resolve(), "rw") for p in (workdir, home, audit_log)]
    script = runtime / "enter.sh"
    script.touch(mode=0o700)
    script.write_text(_script(hidden, exposed, runtime / "stage", env_file, Path(workdir).resolve(), uid, gid))
    # env -i: nothing of this process's environment (PYTHONPATH to the checkout, data dir, secrets) leaks in.
    return ["env", "-i", "PATH=/usr/sbin:/usr/bin:/sbin:/bin", "unshare", "-m", "--propagation", "private",
            "/bin/sh", str(script), *argv]  # fmt: skip


def isolation_kwargs(folder: Path, *, checkout: Path, venv: Path, data_dir: Path, basetemp: Path) -> dict:
    """Keyword arguments of ``isolated_command`` (without argv and env) for one process whose workdir, home and
    audit log are under ``folder``. Hidden besides the checkout: the data folder, everything beside the checkout
    (sibling checkouts, ../shared/data) and this user's pytest folders (the tmpfs over ``pytest-of-<user>``,
    mode 0700, also lets the unprivileged user reach its own folders bound back below it)."""
    hide = [data_dir, basetemp.parent if basetemp.parent.name.startswith("pytest-of-") else basetemp]
    if checkout.parent != Path(checkout.anchor):
        hide.append(checkout.parent)
    return dict(
        checkout=checkout,
        venv=venv,
        workdir=folder / "work",
        home=folder / "home",
        audit_log=folder / "audit.log",
        hide=hide,
    )


def hidden_folders(checkout: Path, venv: Path, hide: list[Path] | tuple[Path, ...] = ()) -> list[Path]:
    """What an isolated process cannot see: the checkout, the venv's editable targets, this user's HOME, ``hide``."""
    venv = Path(venv).resolve()
    return _outermost([Path(checkout), *_editable_targets(venv), Path.home(), *(Path(p) for p in hide)])


def cleanup(argv: list[str]) -> None:
    """Remove the runtime folder of an ``isolated_command`` argv (after its process has exited)."""
    script = Path(argv[argv.index("/bin/sh") + 1])
    if script.parent.name.startswith("emotion-isolated-"):
        shutil.rmtree(script.parent, ignore_errors=True)


def read_audit(audit_log: Path) -> list[tuple[str, str]]:
    """The (event, path) pairs the isolated processes logged."""
    return [tuple(line.split("\t", 1)) for line in Path(audit_log).read_text().splitlines() if "\t" in line]


def leaked(
    *,
    checkout: Path,
    venv: Path,
    workdir: Path,
    home: Path,
    audit_log: Path,
    hide: list[Path] | tuple[Path, ...] = (),
    **_: object,
) -> list[str]:
    """Paths in ``audit_log`` inside a hidden folder and outside what was bound back (venv, Python, workdir, home).

    Takes the keyword arguments of ``isolated_command`` (extra ones such as ``env`` are ignored).
    """
    hidden = hidden_folders(checkout, venv, hide)
    visible = [Path(venv), Path(sys.base_prefix), Path(workdir), Path(home), Path(audit_log)]
    visible = [Path(os.path.realpath(p)) for p in visible]
    return sorted({p for _, p in read_audit(audit_log) if _under(Path(p), hidden) and not _under(Path(p), visible)})


def _child_env(env: dict[str, str], *, home: Path, venv: Path, site: Path, audit_log: Path) -> dict[str, str]:
    """``env`` plus a home of its own for every cache, the venv on PATH, the audit hook on PYTHONPATH."""
    caches = {
        "HOME": home,
        "TMPDIR": home / "tmp",
        "XDG_CACHE_HOME": home / ".cache",
        "XDG_CONFIG_HOME": home / ".config",
        "XDG_DATA_HOME": home / ".local" / "share",
        "HF_HOME": home / ".cache" / "huggingface",
        "EMOTION_CACHE_DIR": home / ".cache" / "emotion",
        "PREFECT_HOME": home / ".prefect",
        "MPLCONFIGDIR": home / ".config" / "matplotlib",
    }
    for folder in caches.values():
        folder.mkdir(parents=True, exist_ok=True)
    out = {"PATH": f"{venv / 'bin'}:/usr/local/bin:/usr/bin:/bin", **{k: str(v) for k, v in caches.items()}}
    out.update(env)
    out["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH", "")]))
    out["EMOTION_AUDIT_LOG"] = str(audit_log)
    return out


def _script(hidden: list[Path], exposed: list[tuple[Path, str]], stage: Path, env_file: Path, workdir: Path,
            uid: int, gid: int) -> str:  # fmt: skip
    """Shell run as root in the new mount namespace: bind aside, hide, bind back, drop to ``uid``, exec."""
    q = shlex.quote
    inside = [(path, mode) for path, mode in exposed if _under(path, hidden)]
    lines = ["set -eu", f"mkdir -p {q(str(stage))}"]
    for i, (path, _) in enumerate(inside):  # aside first: the tmpfs below covers the originals
        aside = stage / str(i)
        lines += [f"mkdir -p {q(str(aside))}" if path.is_dir() else f"touch {q(str(aside))}",
                  f"mount --bind {q(str(path))} {q(str(aside))}"]  # fmt: skip
    for folder in hidden:
        lines.append(f"mount -t tmpfs -o mode=755,size=1m,nosuid,nodev tmpfs {q(str(folder))}")
    for i, (path, mode) in enumerate(inside):
        aside = stage / str(i)
        parent = path if path.is_dir() else path.parent
        make = f"mkdir -p {q(str(parent))}" + ("" if path.is_dir() else f" && touch {q(str(path))}")
        lines += [make, f"mount --bind {q(str(aside))} {q(str(path))}"]
        if mode == "ro":
            lines.append(f"mount -o remount,bind,ro {q(str(path))}")
        lines.append(f"umount {q(str(aside))}")
    lines += [
        f". {q(str(env_file))}",
        f"cd {q(str(workdir))}",
        f'exec setpriv --reuid={uid} --regid={gid} --clear-groups --inh-caps=-all --no-new-privs -- "$@"',
    ]
    return "\n".join(lines) + "\n"


def _editable_targets(venv: Path) -> list[Path]:
    """Folders the venv's editable installs import from (a path in a ``.pth``, setuptools' finder MAPPING)."""
    targets: list[Path] = []
    for site_packages in venv.glob("lib/python*/site-packages"):
        for pth in site_packages.glob("*.pth"):
            for line in pth.read_text(errors="replace").splitlines():
                if line.strip() and not line.startswith(("import", "#")) and Path(line.strip()).is_dir():
                    targets.append(Path(line.strip()))
        for finder in site_packages.glob("__editable__*_finder.py"):
            for line in finder.read_text(errors="replace").splitlines():
                if line.startswith("MAPPING"):
                    mapping = ast.literal_eval(line.split("=", 1)[1].strip())
                    targets += [Path(p).parent for p in mapping.values()]
    return [t for t in targets if not _under(t, [venv]) and t != Path("/")]


def _outermost(folders: list[Path]) -> list[Path]:
    """Existing folders, resolved, without those inside another one of the list."""
    real = sorted({f.resolve() for f in folders if f.is_dir() and f.resolve() != Path("/")})
    return [f for f in real if not any(f != o and f.is_relative_to(o) for o in real)]


def _under(path: Path, folders: list[Path]) -> bool:
    return any(path == f or path.is_relative_to(f) for f in folders)


def _chown_tree(path: Path, uid: int, gid: int) -> None:
    os.chown(path, uid, gid)
    if path.is_dir():
        for root, dirs, files in os.walk(path):
            for name in dirs + files:
                os.chown(os.path.join(root, name), uid, gid, follow_symlinks=False)
