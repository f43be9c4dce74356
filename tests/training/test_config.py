import dataclasses
from typing import Literal

import pytest
import yaml

from videostate.training import OptimConfig, TrainerConfig
from videostate.training.config import ConfigError, apply_overrides, from_dict, load_yaml, to_dict
from videostate.training.recipe import load_recipe, recipe_to_dict, register_task

TASK = "tests.training.tiny_task:TASK"


@dataclasses.dataclass
class Inner:
    size: tuple[int, int] = (4, 4)
    mode: Literal["a", "b"] = "a"


@dataclasses.dataclass
class Outer:
    name: str
    rate: float = 0.5
    steps: int | None = None
    tags: list[str] = dataclasses.field(default_factory=list)
    inner: Inner = dataclasses.field(default_factory=Inner)


def test_from_dict_converts_and_nests():
    cfg = from_dict(Outer, {"name": "x", "rate": "1e-4", "steps": 3, "tags": ["a"], "inner": {"size": [2, 3]}})
    assert cfg == Outer("x", 1e-4, 3, ["a"], Inner((2, 3), "a"))
    assert to_dict(cfg) == {
        "name": "x",
        "rate": 1e-4,
        "steps": 3,
        "tags": ["a"],
        "inner": {"size": [2, 3], "mode": "a"},
    }
    assert from_dict(Outer, {"name": "y", "steps": None}).steps is None


@pytest.mark.parametrize(
    "data,message",
    [
        ({"name": "x", "rat": 1}, r"unknown key\(s\) \['rat'\] in config; valid keys: \['inner', 'name'"),
        ({"name": "x", "inner": {"sizes": [1, 2]}}, r"unknown key\(s\) \['sizes'\] in inner"),
        ({"name": "x", "inner": {"mode": "c"}}, r"inner.mode must be one of \['a', 'b'\]; got 'c'"),
        ({"name": "x", "inner": {"size": [1]}}, r"inner.size must have 2 entries"),
        ({"name": "x", "steps": 2.5}, r"steps.*2.5"),
        ({"name": "x", "rate": "fast"}, r"rate must be a number; got 'fast'"),
        ({"rate": 1.0}, r"missing required key\(s\) \['name'\]"),
    ],
)
def test_from_dict_errors_name_the_key(data, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(Outer, data)


def test_overrides_set_dotted_keys_and_parse_yaml():
    base = {"optim": {"lr": 0.1}, "trainer": {"max_steps": 5}}
    out = apply_overrides(
        base, ["optim.lr=1e-4", "trainer.output_dir=runs/x", "optim.betas=[0.8, 0.9]", "new.deep.key=true"]
    )
    assert out == {
        "optim": {"lr": "1e-4", "betas": [0.8, 0.9]},
        "trainer": {"max_steps": 5, "output_dir": "runs/x"},
        "new": {"deep": {"key": True}},
    }
    assert base == {"optim": {"lr": 0.1}, "trainer": {"max_steps": 5}}  # the input is not modified
    assert from_dict(OptimConfig, out["optim"]).lr == 1e-4
    with pytest.raises(ConfigError, match=r"dotted.key=value"):
        apply_overrides(base, ["optim.lr"])
    with pytest.raises(ConfigError, match=r"trainer.max_steps is a value, not a section"):
        apply_overrides(base, ["trainer.max_steps.x=1"])


def test_recipe_sections_are_typed_by_the_task(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({"task": TASK, "optim": {"lr": 0.01}, "data": {"length": 7}}))
    recipe = load_recipe(path, ["trainer.max_steps=3", "model.seed=2"])
    assert recipe.trainer == TrainerConfig(max_steps=3) and recipe.optim.lr == 0.01
    assert (recipe.model.seed, recipe.data.length, recipe.data.num_sequences) == (2, 7, 8)
    assert load_recipe(recipe_to_dict(recipe)) == recipe  # what --print-config shows loads back
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['width'\] in model"):
        load_recipe(path, ["model.width=3"])
    with pytest.raises(ConfigError, match=r"unknown section\(s\) \['optimizer'\]"):
        load_recipe(path, ["optimizer.lr=3"])
    with pytest.raises(ConfigError, match=r"unknown task 'nope'"):
        load_recipe({"task": "nope"})
    with pytest.raises(ConfigError, match=r"cannot import"):
        load_recipe({"task": "tests.training.tiny_task:MISSING"})
    with pytest.raises(ConfigError, match=r"cannot import 'TASK' from .*nofile.py"):
        load_recipe({"task": str(tmp_path / "nofile.py") + ":TASK"})
    with pytest.raises(FileNotFoundError, match=r"missing.yaml"):
        load_yaml(tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match=r"mapping at the top level"):
        load_yaml(tmp_path / "list.yaml")


def test_registered_task_by_name():
    from tests.training.tiny_task import TASK as task

    register_task(task)
    assert register_task(task) is task  # registering the same task again is harmless
    assert load_recipe({"task": "tiny-sequence"}).task == "tiny-sequence"
    with pytest.raises(ValueError, match=r"already registered"):
        register_task(dataclasses.replace(task))


def test_task_from_a_python_file(tmp_path):
    source = tmp_path / "my_tasks.py"
    source.write_text("from tests.training.tiny_task import TASK as MINE\n")
    recipe = load_recipe({"task": f"{source}:MINE", "model": {"seed": 4}})
    assert recipe.model.seed == 4


def test_train_builds_the_optimizer_from_the_tasks_groups(tmp_path, monkeypatch):
    import videostate.training.recipe as recipe_module

    seen = []

    class Recording(recipe_module.Trainer):
        def fit(self, steps=None):
            seen.append(
                [(group["lr"], group["weight_decay"], len(group["params"])) for group in self.optimizer.param_groups]
            )
            return self.model

    monkeypatch.setattr(recipe_module, "Trainer", Recording)
    recipe = load_recipe(
        {
            "task": "tests.training.tiny_task:GROUPED_TASK",
            "trainer": {"max_steps": 1, "device": "cpu", "output_dir": str(tmp_path), "progress": False},
            "optim": {"lr": 1e-3, "weight_decay": 0.05},
        }
    )
    recipe_module.train(recipe)
    (groups,) = seen
    assert groups[0][:2] == (0.25e-3, 0.05) and groups[0][2] == 1
    assert groups[1][:2] == (1e-3, 0.0)
