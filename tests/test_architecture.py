"""The layout keeps its promises: no import cycles through the entry point, no reaching into another
module's private helpers, losses free of config and trainers, and the README's tables true to conf/."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from rlhf_lab.config import config_groups_help

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "rlhf_lab"
CONF = PACKAGE / "conf"


def imports(path: Path) -> list[tuple[str, list[str]]]:
    """``(module, names)`` of every ``from X import a, b`` and ``import X`` in a file, lazy ones included."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.append((node.module, [alias.name for alias in node.names]))
        elif isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names]
    return found


MODULES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=[str(p.relative_to(REPO)) for p in MODULES])
def test_no_module_imports_the_entry_point_or_private_helpers(path: Path) -> None:
    for module, names in imports(path):
        assert module != "rlhf_lab.__main__", f"{path.name} imports the entry point (an import cycle)"
        if module.startswith("rlhf_lab"):
            private = [name for name in names if name.startswith("_") and name != "__version__"]
            assert not private, f"{path.name} imports private {private} from {module}"


def test_losses_see_no_config_trainer_or_device() -> None:
    for path in sorted((PACKAGE / "losses").glob("*.py")):
        for module, _ in imports(path):
            assert not module.startswith(("lightning", "hydra", "omegaconf")), (path.name, module)
            assert module.startswith(("rlhf_lab.losses", "rlhf_lab.errors", "torch", "__future__")) or (
                module in ("math", "dataclasses", "inspect", "collections.abc", "typing")
            ), (path.name, module)


def readme_table(heading: str, first_column: str) -> dict[str, str]:
    """The rows of the README table under ``heading`` whose header starts with ``first_column``."""
    text = (REPO / "README.md").read_text()
    section = text.split(heading, 1)[1]
    match = re.search(rf"^\| {first_column} \|.*?\n((?:\|.*\n)+)", section, flags=re.MULTILINE)
    assert match, f"no '{first_column}' table under {heading!r}"
    rows = {}
    for line in match.group(1).splitlines()[1:]:
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        rows[cells[0].strip("`")] = cells[1]
    return rows


def test_readme_config_groups_table_lists_every_option_in_conf() -> None:
    """The README's group table names exactly the options conf/ holds (it went stale once)."""
    table = readme_table("## Configuration reference", "group")
    listed = dict(line.split(": ", 1) for line in config_groups_help().splitlines())
    assert set(table) == set(listed), "README groups differ from conf/ groups"
    for group, options in listed.items():
        in_readme = set(re.findall(r"`([^`]+)`", table[group]))
        assert in_readme == set(options.split(", ")), f"README options of {group!r} differ from conf/{group}"


def test_readme_layout_table_lists_every_registered_layout() -> None:
    """The "Bring your data" table names exactly the layouts the registry holds (``data.format``'s choices)."""
    from rlhf_lab.data.formats import FORMATS

    table = readme_table("## Bring your data", r"layout \(`data.format`\)")
    assert set(table) == set(FORMATS)


#: The structure the project keeps: a module that outgrows these is split along a seam, a function too.
MAX_MODULE_LINES = 450
MAX_FUNCTION_LINES = 60  # signature, docstring and body


def test_no_module_or_function_outgrows_the_limits() -> None:
    too_long = []
    for path in sorted((REPO / "rlhf_lab").rglob("*.py")):
        source = path.read_text()
        name = path.relative_to(REPO)
        if source.count("\n") > MAX_MODULE_LINES:
            too_long.append(f"{name}: {source.count(chr(10))} lines")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1  # type: ignore[operator]
                if length > MAX_FUNCTION_LINES:
                    too_long.append(f"{name}:{node.lineno} {node.name}: {length} lines")
    assert not too_long, "\n".join(too_long)


def test_the_online_objective_is_one_class_over_registered_parts() -> None:
    """GRPO, RLOO, PPO and REINFORCE++ are YAML files naming registered parts over one objective class."""
    from omegaconf import OmegaConf

    from rlhf_lab.losses.advantages import ADVANTAGE_ESTIMATORS
    from rlhf_lab.losses.policy_gradient import LOSS_AGGREGATIONS, POLICY_LOSSES

    online = (REPO / "rlhf_lab" / "objectives" / "online.py").read_text()
    assert online.count("\n") < 300
    for algo in ("grpo", "rloo", "ppo", "reinforce_pp"):
        node = OmegaConf.load(CONF / "algo" / f"{algo}.yaml")
        assert node._target_ == "rlhf_lab.objectives.OnlineObjective", algo
        ADVANTAGE_ESTIMATORS.get(node.advantage_estimator)
        POLICY_LOSSES.get(node.policy_loss)
        LOSS_AGGREGATIONS.get(node.loss_agg_mode)
