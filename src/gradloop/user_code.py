"""A user's own function, named as ``FILE.py:FUNCTION`` or ``package.module:FUNCTION``.

    fn = load_function("model.py:build", what="--model")        import the file, find the function
    call_function(fn, what="--model model.py:build", input_shape=(28, 28), num_classes=10)
        -> build(input_shape=(28, 28), num_classes=10), passing only what ``build`` declares

Whatever goes wrong in the user's code (the file is missing or does not import,
the function is absent, it raises) becomes one :class:`~gradloop.errors.ConfigError`
line naming the spec, with the user's exception chained for ``--debug``.

Imports of a file's sibling modules: while ``FILE.py`` is imported, its folder
is first on ``sys.path``, so ``import helpers`` at its top finds ``helpers.py``
beside it. The folder is removed afterwards, and so are the sibling modules it
imported (from ``sys.modules``; the file keeps its references): a second file
elsewhere with its own ``helpers.py`` gets its own, and ``sys.path`` is as
before. So import siblings at the top of the file, not inside the function,
and give them names no installed module has (an imported ``utils`` shadows yours).
``package.module`` is imported as any module is: it must be installed or on
``PYTHONPATH``.

Copying a user's file into a run, so that a resume does not depend on the original (the
``--model`` file, each ``--callback`` file):

    check_copyable(path, own={"model_source.py", ...}, where="--model m.py:build")
    copy_source(path, run_dir, "model_source.py", what="--model")
        -> run_dir/model_source.py, and the sibling modules it imports beside it
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
import itertools
import shutil
import sys
from collections.abc import Callable, Collection, Iterable
from pathlib import Path
from typing import Any

from gradloop import atomic
from gradloop.errors import ConfigError, shortened

_FORMS = "FILE.py:FUNCTION or package.module:FUNCTION"
_module_numbers = itertools.count()


def split_spec(spec: str, *, what: str) -> tuple[str, str]:
    """``"dir/model.py:build"`` -> ``("dir/model.py", "build")``; the target is a ``.py`` file or a module name."""
    target, _, name = str(spec).rpartition(":")
    is_module = bool(target) and all(part.isidentifier() for part in target.split("."))
    if not name.isidentifier() or not (target.endswith(".py") or is_module):
        raise ConfigError(f"{what} {spec}: expected {_FORMS}")
    return target, name


def load_function(spec: str, *, what: str, expected: str = "a function") -> Callable[..., Any]:
    """The callable ``spec`` names (``what``: the flag or option that named it, for messages;
    ``expected``: what it must be, for the message when it is not callable)."""
    target, name = split_spec(spec, what=what)
    module = _import_file(Path(target), spec, what) if target.endswith(".py") else _import_module(target, spec, what)
    where = f"{what} {spec}"
    if not hasattr(module, name):
        defined = sorted(
            k
            for k, v in vars(module).items()
            if callable(v) and not k.startswith("_") and getattr(v, "__module__", None) == module.__name__
        )
        has = f"it defines {', '.join(defined[:10])}" if defined else "it defines no function"
        raise ConfigError(f"{where}: {target} has no {name}; {has}")
    fn = getattr(module, name)
    if not callable(fn):
        raise ConfigError(f"{where}: {name} is {describe(fn)}, not {expected}; name {expected}")
    return fn


def source_path(spec: str, *, what: str) -> Path | None:
    """The file ``spec``'s function comes from (the module's file for ``package.module``), or None."""
    target, _ = split_spec(spec, what=what)
    if target.endswith(".py"):
        return Path(target)
    found = importlib.util.find_spec(target)
    return Path(found.origin) if found is not None and found.has_location and found.origin else None


def accepted(fn: Callable[..., Any], names: Iterable[str]) -> list[str]:
    """Those of ``names`` that ``fn`` takes by keyword (all of them, given ``**kwargs``)."""
    params = _parameters(fn)
    if params is None or any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return list(names)
    return [
        n for n in names if n in params and params[n].kind in (params[n].POSITIONAL_OR_KEYWORD, params[n].KEYWORD_ONLY)
    ]


def missing(fn: Callable[..., Any], names: Iterable[str]) -> list[str]:
    """``fn``'s parameters without a default that a call passing ``names`` by keyword leaves unset."""
    params, given = _parameters(fn), set(names)
    if params is None:
        return []
    return [
        n
        for n, p in params.items()
        if p.default is p.empty
        and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        and (n not in given or p.kind is p.POSITIONAL_ONLY)
    ]


def call_function(fn: Callable[..., Any], *, what: str, **available: Any) -> Any:
    """``fn(**those of available that it declares)``; ``what`` names it in messages
    (``"--model model.py:build"``). A parameter it requires and gradloop does not give, or
    an exception it raises, is one ConfigError line."""
    kwargs = {n: available[n] for n in accepted(fn, available)}
    unset = missing(fn, kwargs)
    if unset:
        gives = ", ".join(available) or "nothing"
        raise ConfigError(
            f"{what} requires {', '.join(unset)}, which gradloop does not pass (it passes {gives}); "
            f"give {'it' if len(unset) == 1 else 'them'} a default value"
        )
    try:
        return fn(**kwargs)
    except (Exception, SystemExit) as exc:  # the user's code: any exception is theirs to fix
        raise ConfigError(f"{what} raised {exception_line(exc)}; fix the function") from exc


def describe(value: Any) -> str:
    """What a value is, for messages: ``a list of 2 items``, ``None``, ``a numpy.ndarray``."""
    if value is None:
        return "None"
    kind = type(value)
    name = (
        kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__.split('.')[0]}.{kind.__qualname__}"
    )
    article = "an" if name[0].lower() in "aeiou" else "a"
    if isinstance(value, (list, tuple, dict, set)):
        return f"{article} {name} of {len(value)} item{'s' if len(value) != 1 else ''}"
    return f"{article} {name}"


def exception_line(exc: BaseException, limit: int = 300) -> str:
    """``ValueError: the message`` on one line, cut at ``limit`` characters (``--debug`` shows it all)."""
    text = shortened(" ".join(str(exc).split()), limit)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# --------------------------------------------------------------------- copying into a run


def copy_source(path: Path, run_dir: Path, copy_name: str, *, what: str) -> None:
    """Copy the Python file ``path`` into ``run_dir`` as ``copy_name``, and the sibling modules it
    imports (:func:`sibling_modules`) beside it under their own names, so that importing the copy finds
    them as the original did. Files are copied byte for byte, each whole or not at all."""
    for module in sibling_modules(path):
        files = (
            [module] if module.is_file() else [f for f in sorted(module.rglob("*.py")) if "__pycache__" not in f.parts]
        )
        for file in files:
            copy = run_dir / file.relative_to(path.parent)
            copy.parent.mkdir(parents=True, exist_ok=True)
            copy_file(file, copy, what=what)
    copy_file(path, run_dir / copy_name, what=what)


def check_copyable(path: Path, *, own: Collection[str], where: str) -> None:
    """Refuse, before a run directory is made or replaced, a file whose sibling modules' copies
    would mix with the run directory's files named ``own`` (``where``: the flag and spec, for messages)."""
    for module in sibling_modules(path):
        if module.name in own:
            raise ConfigError(
                f"{where}: it imports {module.name} from its folder, whose copy would mix with the run "
                f"directory's own {module.name}; rename that module"
            )


def copy_file(source: Path, destination: Path, *, what: str) -> None:
    if not source.is_file():
        raise ConfigError(f"{what} {source}: the file is gone; it must stay until the run has copied it")
    atomic.write_atomically(destination, lambda tmp: shutil.copyfile(source, tmp))


def sibling_modules(path: Path) -> list[Path]:
    """The modules beside ``path`` (``NAME.py`` files, ``NAME/`` packages) that it imports, and those they
    import, found by reading the import statements: a module imported by a computed name is not found."""
    folder, found, todo = path.parent, [], [path]
    while todo:
        try:
            tree = ast.parse(todo.pop().read_bytes())
        except (SyntaxError, ValueError, OSError):  # it imported, so this is unlikely; nothing more to find in it
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for top in {name.split(".")[0] for name in names}:
                for candidate in (folder / f"{top}.py", folder / top):
                    is_module = candidate.is_file() or (candidate / "__init__.py").is_file()
                    if is_module and candidate != path and candidate not in found:
                        found.append(candidate)
                        todo.extend([candidate] if candidate.is_file() else sorted(candidate.rglob("*.py")))
                        break
    return found


# --------------------------------------------------------------------- importing


def _import_file(path: Path, spec: str, what: str) -> Any:
    where = f"{what} {spec}"
    if not path.is_file():
        state = "is a folder" if path.is_dir() else "does not exist"
        raise ConfigError(f"{where}: {path} {state}; pass the path of a Python file")
    folder = str(path.resolve().parent)
    module_name = f"gradloop_user_{''.join(c if c.isalnum() else '_' for c in path.stem)}_{next(_module_numbers)}"
    module_spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(module_spec)
    before = set(sys.modules)
    sys.modules[module_name] = module  # dataclasses, pickling and typing look a class's module up here
    sys.path.insert(0, folder)
    try:
        module_spec.loader.exec_module(module)
    except BaseException as exc:
        del sys.modules[module_name]
        _import_failed(exc, where, beside=True)
    finally:
        if folder in sys.path:
            sys.path.remove(folder)
        for name in set(sys.modules) - before - {module_name}:  # siblings it imported: not shared with the next file
            file = getattr(sys.modules[name], "__file__", None)
            if file and Path(file).resolve().is_relative_to(folder):
                del sys.modules[name]
    return module


def _import_module(target: str, spec: str, what: str) -> Any:
    try:
        return importlib.import_module(target)
    except ModuleNotFoundError as exc:
        if exc.name and (target == exc.name or target.startswith(exc.name + ".")):
            raise ConfigError(
                f"{what} {spec}: no module named {exc.name}; install it, add its folder to PYTHONPATH, "
                "or pass FILE.py:FUNCTION"
            ) from None
        _import_failed(exc, f"{what} {spec}", beside=False)
    except BaseException as exc:
        _import_failed(exc, f"{what} {spec}", beside=False)


def _import_failed(exc: BaseException, where: str, *, beside: bool) -> None:
    """Raise the one line for a module that does not import (KeyboardInterrupt passes through)."""
    if isinstance(exc, KeyboardInterrupt):
        raise exc
    if isinstance(exc, SyntaxError):
        raise ConfigError(
            f"{where}: {exc.filename} line {exc.lineno}: {type(exc).__name__}: {exc.msg}; fix the file"
        ) from exc
    if isinstance(exc, SystemExit):
        raise ConfigError(
            f"{where}: the file exits when imported (sys.exit({exc.code!r})); put its script part "
            "under if __name__ == '__main__':"
        ) from exc
    fix = "fix the file"
    if isinstance(exc, ModuleNotFoundError):
        fix = "install it, or put it beside the file" if beside else "install it"
    raise ConfigError(f"{where} does not import: {exception_line(exc)}; {fix}") from exc


def _parameters(fn: Callable[..., Any]) -> dict[str, inspect.Parameter] | None:
    try:
        return dict(inspect.signature(fn).parameters)
    except (TypeError, ValueError):  # a callable without a signature Python can read: give it everything
        return None
