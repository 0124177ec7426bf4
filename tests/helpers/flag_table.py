"""Parses out-of-range values into every flag of one CLI script and prints what happened, as JSON.

  python tests/helpers/flag_table.py train.py '{"batch_size": ["0"], ...}'

Runs in its own process because train.py, evaluate.py and the demo define flags of the same names. For each
flag of the script it reports its kind (enum, number, numbers, bool, string) and, for each value of the table,
the parser's message (None when the value was accepted).
"""

import importlib.util
import json
import os
import sys

from absl import flags

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)


def kind(flag):
    parser = type(flag.parser).__name__
    if isinstance(flag.parser, flags.EnumParser):
        return "enum"
    if parser in ("_RangeParser", "IntegerParser", "FloatParser"):
        return "number"
    if parser == "_RangeListParser":
        return "numbers"
    if isinstance(flag.parser, flags.BooleanParser):
        return "bool"
    return "string"


def main(script, table):
    spec = importlib.util.spec_from_file_location("cli_under_test", os.path.join(REPO, script))
    module = importlib.util.module_from_spec(spec)
    sys.modules["cli_under_test"] = module  # absl names a flag's module from the defining frame
    spec.loader.exec_module(module)
    # The script's own flags and those of the psl_keras program it starts (the launchers define none).
    defined = [flag for name, module_flags in flags.FLAGS.flags_by_module_dict().items()
               if name == "cli_under_test" or name.startswith("psl_keras") for flag in module_flags]
    report = {}
    for flag in defined:
        results = {}
        for value in table.get(flag.name, []) + [flag.default_as_str.strip("'") if flag.default is not None else None]:
            if value is None:
                continue
            try:
                flags.FLAGS[flag.name].parse(value)
                results[value] = None
            except flags.IllegalFlagValueError as err:
                results[value] = str(err)
        report[flag.name] = {"kind": kind(flag), "default": flag.default_as_str, "results": results}
    print(json.dumps(report))


if __name__ == "__main__":
    main(sys.argv[1], json.loads(sys.argv[2]))
