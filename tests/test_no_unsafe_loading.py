"""No code path in medfm (or evaluation/) can unpickle a file, except the one trusted, weights-only load.

The source is parsed with ``ast`` and calls are resolved through imports, so aliases
(``import torch as t; t.load``, ``from pickle import loads as l``, ``getattr(torch, "load")``)
and bare references (``loader = pickle.loads``) are found too. Refused:

- ``torch.load`` (except :data:`ALLOWED`, which must pass ``weights_only=True``),
  ``torch.hub.load``, ``torch.jit.load``, ``pickle``/``dill``/``cloudpickle``/``joblib``
  loads, ``pandas.read_pickle``, ``shelve.open``, ``yaml.unsafe_load``/``full_load``;
- ``numpy.load`` with ``allow_pickle`` anything but ``False``;
- ``yaml.load`` with a loader that builds Python objects (``Loader``, ``UnsafeLoader``, ``FullLoader``);
- ``trust_remote_code`` anything but ``False``;
- a transformers or peft ``from_pretrained`` of weights without ``use_safetensors=True``
  (they fall back to a folder's pickle ``pytorch_model.bin``).

The scanner's own tests run it on small snippets, so it cannot pass by finding nothing.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass

import pytest

from .conftest import REPO

SCANNED = ("medfm", "evaluation")
ALLOWED = ("medfm/models/trust.py", "torch.load")  # the trust_pickle=True path, weights only

UNPICKLERS = {
    "torch.load", "torch.serialization.load", "torch.hub.load", "torch.hub.load_state_dict_from_url",
    "torch.jit.load", "pickle.load", "pickle.loads", "pickle.Unpickler", "_pickle.load", "_pickle.loads",
    "_pickle.Unpickler", "dill.load", "dill.loads", "cloudpickle.load", "cloudpickle.loads", "joblib.load",
    "pandas.read_pickle", "shelve.open", "yaml.unsafe_load", "yaml.unsafe_load_all", "yaml.full_load",
    "yaml.full_load_all",
}
NUMPY_LOADS = {"numpy.load", "numpy.lib.npyio.load"}
YAML_LOADS = {"yaml.load", "yaml.load_all"}
UNSAFE_YAML_LOADERS = {f"yaml.{name}" for name in ("Loader", "UnsafeLoader", "FullLoader", "CLoader",
                                                   "CUnsafeLoader", "CFullLoader")}
WATCHED_MODULES = {name.split(".")[0] for name in UNPICKLERS | NUMPY_LOADS | YAML_LOADS}
# Loaders of configs and tokenizers read JSON and text; everything else named from_pretrained reads weights.
NOT_WEIGHTS = ("Config", "Tokenizer", "Processor", "FeatureExtractor")


@dataclass(frozen=True)
class Finding:
    path: str
    line: int
    name: str
    weights_only: bool = False

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.name}"


def import_aliases(tree: ast.AST) -> dict[str, str]:
    """``{local name: qualified name}`` for every import in the module (any scope, conservatively)."""
    aliases: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname:
                    aliases[alias.asname] = alias.name
                else:  # `import torch.serialization` binds `torch`
                    root = alias.name.split(".")[0]
                    aliases[root] = root
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for alias in node.names:
                aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    return aliases


def qualified_name(node: ast.AST, aliases: dict[str, str]) -> str | None:
    """``torch.load`` for ``t.load`` after ``import torch as t``; ``getattr(torch, "load")`` too."""
    if isinstance(node, ast.Name):
        return aliases.get(node.id)
    if isinstance(node, ast.Attribute):
        base = qualified_name(node.value, aliases)
        return f"{base}.{node.attr}" if base else None
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "getattr"
            and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str)):
        base = qualified_name(node.args[0], aliases)
        return f"{base}.{node.args[1].value}" if base else None
    return None


def keyword(call: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def is_constant(node: ast.expr | None, value: object) -> bool:
    return isinstance(node, ast.Constant) and node.value is value


def has_star_kwargs(call: ast.Call) -> bool:
    return any(k.arg is None for k in call.keywords)


def scan_source(source: str, path: str = "<snippet>") -> list[Finding]:
    """Every unsafe load (or reference to one) in ``source``; the allowed call is reported too, flagged."""
    tree = ast.parse(source)
    aliases = import_aliases(tree)
    findings: list[Finding] = []
    called: set[int] = set()  # func nodes of calls, reported with their call rather than as references
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in WATCHED_MODULES \
                and any(alias.name == "*" for alias in node.names):
            findings.append(Finding(path, node.lineno, f"from {node.module} import *"))
        if not isinstance(node, ast.Call):
            continue
        name = qualified_name(node.func, aliases)
        if isinstance(node.func, ast.Call):  # getattr(torch, "load")(...)
            called.add(id(node.func.func))
        called.add(id(node.func))
        trust_code = keyword(node, "trust_remote_code")
        if trust_code is not None and not is_constant(trust_code, False):
            findings.append(Finding(path, node.lineno, "trust_remote_code not False"))
        if name is None:
            continue
        if name in UNPICKLERS:
            weights_only = is_constant(keyword(node, "weights_only"), True) and not has_star_kwargs(node)
            findings.append(Finding(path, node.lineno, name, weights_only))
        elif name in NUMPY_LOADS:
            allow = keyword(node, "allow_pickle")
            if (allow is not None and not is_constant(allow, False)) or has_star_kwargs(node):
                findings.append(Finding(path, node.lineno, f"{name}(allow_pickle=...)"))
        elif name in YAML_LOADS:
            loader = keyword(node, "Loader") or (node.args[1] if len(node.args) > 1 else None)
            if loader is None or qualified_name(loader, aliases) in UNSAFE_YAML_LOADERS or has_star_kwargs(node):
                findings.append(Finding(path, node.lineno, f"{name} with an object-building loader"))
        elif name.endswith(".from_pretrained") and name.split(".")[0] in ("transformers", "peft"):
            owner = name.split(".")[-2]
            if not owner.endswith(NOT_WEIGHTS) and not is_constant(keyword(node, "use_safetensors"), True):
                findings.append(Finding(path, node.lineno, f"{name} without use_safetensors=True"))
    for node in ast.walk(tree):  # references: `loader = pickle.loads`, `map(torch.load, files)`
        if isinstance(node, ast.Name | ast.Attribute | ast.Call) and id(node) not in called:
            name = qualified_name(node, aliases)
            if name in UNPICKLERS:
                findings.append(Finding(path, node.lineno, f"reference to {name}"))
    return findings


def scan_tree() -> tuple[list[Finding], int]:
    """Findings over every ``.py`` file under :data:`SCANNED`, and how many files were read."""
    findings, files = [], 0
    for folder in SCANNED:
        for path in sorted((REPO / folder).rglob("*.py")):
            files += 1
            findings += scan_source(path.read_text(encoding="utf-8"), path.relative_to(REPO).as_posix())
    return findings, files


def is_allowed(finding: Finding) -> bool:
    return (finding.path, finding.name) == ALLOWED and finding.weights_only


def test_nothing_unpickles_except_the_one_weights_only_load():
    findings, files = scan_tree()
    assert files > 50  # the scan really read the package
    refused = [f for f in findings if not is_allowed(f)]
    assert not refused, "unsafe loading (see tests/test_no_unsafe_loading.py):\n" + "\n".join(map(str, refused))
    allowed = [f for f in findings if is_allowed(f)]
    assert len(allowed) == 1, f"expected the single trusted torch.load in {ALLOWED[0]}, found {allowed}"


@pytest.mark.parametrize(("source", "expected"), [
    ("import torch\ntorch.load(p)", ["torch.load"]),
    ("import torch as t\nt.load(p, weights_only=True)", ["torch.load"]),
    ("from torch import load\nload(p)", ["torch.load"]),
    ("from torch import load as fetch\nfetch(p)", ["torch.load"]),
    ("import torch.serialization\ntorch.serialization.load(p)", ["torch.serialization.load"]),
    ("from torch import serialization as s\ns.load(p)", ["torch.serialization.load"]),
    ("import torch\ngetattr(torch, 'load')(p)", ["torch.load"]),
    ("import torch\nloader = torch.load\nloader(p)", ["reference to torch.load"]),
    ("import torch\nlist(map(torch.load, files))", ["reference to torch.load"]),
    ("def f(p):\n    import pickle\n    return pickle.loads(p)", ["pickle.loads"]),
    ("import pickle as pk\npk.load(f)", ["pickle.load"]),
    ("from pickle import Unpickler\nUnpickler(f).load()", ["pickle.Unpickler"]),
    ("import _pickle\n_pickle.loads(b)", ["_pickle.loads"]),
    ("import joblib\njoblib.load(p)", ["joblib.load"]),
    ("import dill\ndill.loads(b)", ["dill.loads"]),
    ("import pandas as pd\npd.read_pickle(p)", ["pandas.read_pickle"]),
    ("import shelve\nshelve.open(p)", ["shelve.open"]),
    ("from pickle import *\nloads(b)", ["from pickle import *"]),
    ("import numpy as np\nnp.load(p, allow_pickle=True)", ["numpy.load(allow_pickle=...)"]),
    ("import numpy as np\nnp.load(p, allow_pickle=flag)", ["numpy.load(allow_pickle=...)"]),
    ("import numpy as np\nnp.load(p, **options)", ["numpy.load(allow_pickle=...)"]),
    ("from numpy import load\nload(p, allow_pickle=True)", ["numpy.load(allow_pickle=...)"]),
    ("import yaml\nyaml.load(text, Loader=yaml.Loader)", ["yaml.load with an object-building loader"]),
    ("import yaml\nyaml.load(text, yaml.UnsafeLoader)", ["yaml.load with an object-building loader"]),
    ("import yaml\nyaml.unsafe_load(text)", ["yaml.unsafe_load"]),
    ("from transformers import AutoModel\nAutoModel.from_pretrained(p)",
     ["transformers.AutoModel.from_pretrained without use_safetensors=True"]),
    ("import transformers\ntransformers.BertModel.from_pretrained(p, use_safetensors=False)",
     ["transformers.BertModel.from_pretrained without use_safetensors=True"]),
    ("from peft import PeftModel\nPeftModel.from_pretrained(m, p)",
     ["peft.PeftModel.from_pretrained without use_safetensors=True"]),
    ("from transformers import AutoModel\nAutoModel.from_pretrained(p, trust_remote_code=True, use_safetensors=True)",
     ["trust_remote_code not False"]),
    # Safe: these must not be reported.
    ("import numpy as np\nnp.load(p)\nnp.load(p, allow_pickle=False)", []),
    ("import yaml\nyaml.safe_load(t)\nyaml.load(t, Loader=yaml.SafeLoader)\nyaml.load(t, Loader=MyLoader)", []),
    ("from transformers import AutoModel, AutoTokenizer, AutoConfig\n"
     "AutoModel.from_pretrained(p, use_safetensors=True, trust_remote_code=False)\n"
     "AutoTokenizer.from_pretrained(p)\nAutoConfig.from_pretrained(p)", []),
    ("import json\njson.load(f)\nindex.load(d)\nfrom safetensors.torch import load_file\nload_file(p)", []),
    ("from medfm.models import MultimodalModel\nMultimodalModel.from_pretrained(d)", []),
])
def test_the_scanner_finds_each_spelling(source, expected):
    assert [f.name for f in scan_source(source)] == expected


def test_the_scanner_checks_weights_only_in_the_ast():
    (plain,) = scan_source("import torch\ntorch.load(p, map_location='cpu')", ALLOWED[0])
    (weights_only,) = scan_source("import torch\ntorch.load(p, weights_only=True)", ALLOWED[0])
    (spread,) = scan_source("import torch\ntorch.load(p, weights_only=True, **more)", ALLOWED[0])
    (variable,) = scan_source("import torch\ntorch.load(p, weights_only=flag)", ALLOWED[0])
    assert [is_allowed(f) for f in (plain, weights_only, spread, variable)] == [False, True, False, False]
    (elsewhere,) = scan_source("import torch\ntorch.load(p, weights_only=True)", "medfm/other.py")
    assert not is_allowed(elsewhere) and str(elsewhere) == "medfm/other.py:2: torch.load"
