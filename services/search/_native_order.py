"""Native libraries that must be loaded in a fixed order when one process has both.

usearch 2.26.6's extension, loaded first, leaves libstdc++'s locale facets so that onnxruntime
1.32's import then crashes the process (SIGSEGV in `std::codecvt<char16_t>::do_unshift`, on the
main thread or any other); the other order is fine. A search replica never runs the model, but
processes that hold both do: `doctag search eval` and `tests.search_tune` (a model-serving in the
same process), and the test suite. So where onnxruntime is installed it is loaded before usearch;
where it is not (the search role's own install), this does nothing.
"""
from __future__ import annotations

import importlib
import importlib.util


def load_onnxruntime_first() -> None:
    if importlib.util.find_spec("onnxruntime") is not None:
        importlib.import_module("onnxruntime")
