"""`doctag model train` and `doctag model eval`: build the default tagging model, and measure a model.

`eval --model` takes an artifact directory or a registered version ("NAME:VERSION",
"NAME@ALIAS", or a bare alias / version number of the default model name).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path
from typing import Any

from .admin import AdminError


def _resolve_model_dir(settings: Any, ref: str) -> Path:
    path = Path(ref)
    if path.is_dir():
        return path
    if "/" in ref or ref.startswith("."):
        raise AdminError(f"--model {ref}: no such directory")
    from . import model_registry_cmds

    try:
        return model_registry_cmds.resolve_directory(settings, ref)
    except AdminError:
        raise
    except Exception as exc:  # noqa: BLE001 - any lookup failure is the operator's to read
        raise AdminError(f"--model {ref!r} is neither a directory nor a registered version: {exc}") from None


def _training_package() -> None:
    """`eval` and `train` use the training package, which only a training install carries."""
    if importlib.util.find_spec("services.model_training") is None:
        raise AdminError("this command needs the training code (the `train` extra: pip install 'doctag[train]'); "
                         "model-serving hosts do not carry it")


def cmd_eval(settings: Any, args: argparse.Namespace) -> None:
    _training_package()
    from services.model_serving.models.loader import load_model
    from services.model_serving.models.manifest import ModelIntegrityError
    from services.model_serving.settings import ModelServingSettings
    from services.model_training.evaluation import evaluate, read_labelled

    data = Path(args.data)
    if not data.is_file():
        raise AdminError(f"--data {data}: no such file")
    try:
        items = read_labelled(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise AdminError(f"--data: {exc}") from None
    directory = _resolve_model_dir(settings, args.model)
    serving = ModelServingSettings()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    try:
        model = load_model(directory, serving.inference_options())
    except ModelIntegrityError as exc:
        raise AdminError(f"--model {args.model}: {exc}") from None
    report = evaluate(model, items, batch_max_windows=serving.batch_max_windows)
    report["data"] = str(data)
    print(json.dumps(report, ensure_ascii=False, indent=None if args.compact else 2))


def cmd_train(settings: Any, args: argparse.Namespace) -> None:
    _training_package()
    from services.common.logging import configure_logging
    from services.model_training import train_hybrid

    configure_logging("train", "INFO")   # progress of the long stages, as JSON lines
    out = train_hybrid.main_from_args(args)
    if args.register:
        from . import model_registry_cmds

        print(model_registry_cmds.register_directory(settings, out))


def add_commands(model: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    ev = model.add_parser("eval", help="accuracy, macro-F1 and per-label F1 on a labelled JSONL file (JSON out)")
    ev.add_argument("--model", required=True, help="artifact directory, or NAME:VERSION / NAME@ALIAS / ALIAS")
    ev.add_argument("--data", required=True, help="JSONL with text, optional title, label")
    ev.add_argument("--threads", type=int, default=0, help="torch threads (default: DOCTAG_TORCH_THREADS)")
    ev.add_argument("--compact", action="store_true", help="one line of JSON")
    ev.set_defaults(func=cmd_eval)

    tr = model.add_parser("train", help="train the default e5-hybrid model from the training data "
                                        "(needs the train extra)")
    if importlib.util.find_spec("services.model_training") is not None:
        from services.model_training.config import add_arguments

        add_arguments(tr)
    else:  # its flags are unknown here: accept any, so that the command itself says what is missing
        tr.set_defaults(accepts_unknown_flags=True)
    tr.add_argument("--register", action="store_true", help="register the result in the model registry")
    tr.set_defaults(func=cmd_train)
