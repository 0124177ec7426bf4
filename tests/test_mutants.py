"""The mutant catalogue (tests/mutants.py) stays in step with the code: every edit applies to exactly one place."""

import os
import shutil

import pytest

from conftest import REPO
from mutants import MUTANTS, apply


def test_catalogue_covers_every_module_named_by_the_invariants():
    modules = {m.path for m in MUTANTS}
    for module in ("stages.py", "tasks/rotation.py", "tasks/jigsaw.py", "data/__init__.py", "optim.py",
                   "training/trainer.py", "evaluation/linear.py", "evaluation/knn.py", "evaluation/protocols.py"):
        assert f"psl_keras/{module}" in modules, module
    assert len({m.id for m in MUTANTS}) == len(MUTANTS) >= 20


@pytest.mark.parametrize("mutant", MUTANTS, ids=[m.id for m in MUTANTS])
def test_every_mutant_applies_to_the_current_source(mutant, tmp_path):
    copy = tmp_path / mutant.path
    copy.parent.mkdir(parents=True)
    shutil.copy(os.path.join(REPO, mutant.path), copy)
    apply(mutant, str(tmp_path))
    assert copy.read_text() != open(os.path.join(REPO, mutant.path)).read()
    for test in mutant.tests:
        assert os.path.isfile(os.path.join(REPO, test)), test
