"""Allowed values of numeric settings, checked before anything runs.

A `Range` is attached to a TrainConfig field, a task option or a CLI flag; `define_number` makes an absl flag
that refuses values outside it at parse time, so `--batch_size 0` ends in one line naming the flag, the value
and what is allowed ("flag --batch_size=0: must be an integer >= 1") instead of a traceback later.
"""

import math
import sys

from absl import flags


def _caller_module():
    """The module that called a define_* helper, as absl names it (so --helpshort lists the flag there)."""
    name = sys._getframe(2).f_globals.get("__name__", "")
    return sys.argv[0] if name == "__main__" else name


class Range:
    """low <= value <= high (either end may be open or absent); `integer` for counts."""

    def __init__(self, low=None, high=None, low_open=False, high_open=False, integer=False):
        self.low, self.high = low, high
        self.low_open, self.high_open = low_open, high_open
        self.integer = integer

    def contains(self, value):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
            return False
        if self.integer and value != int(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        if self.high is not None and (value >= self.high if self.high_open else value > self.high):
            return False
        return math.isfinite(value)

    def __str__(self):
        kind = "an integer" if self.integer else "a number"
        if self.low is not None and self.high is not None:
            left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
            return f"{kind} in {left}{self.low}, {self.high}{right}"
        if self.low is not None:
            return f"{kind} {'>' if self.low_open else '>='} {self.low}"
        if self.high is not None:
            return f"{kind} {'<' if self.high_open else '<='} {self.high}"
        return f"{kind}, finite"

    def error(self, name, value):
        """The message for an out-of-range `value` of setting `name`, or None when it is allowed."""
        if self.contains(value):
            return None
        return f"--{name}={value!r}: must be {self}."


def positive_int():
    return Range(1, integer=True)


def non_negative_int():
    return Range(0, integer=True)


def positive():
    return Range(0, low_open=True)


def non_negative():
    return Range(0)


def fraction(closed=True):
    """[0, 1], or [0, 1) for momentum-like settings."""
    return Range(0, 1, high_open=not closed)


class _RangeParser(flags.ArgumentParser):
    """absl parser of an int or float that refuses values outside a Range."""

    def __init__(self, kind, allowed):
        self.kind, self.allowed = kind, allowed

    def parse(self, argument):
        if isinstance(argument, str):
            try:
                value = self.kind(argument.strip())
            except ValueError:
                raise ValueError(f"not {'an integer' if self.kind is int else 'a number'}; must be "
                                 f"{self.allowed}") from None
        else:
            value = argument
        if not self.allowed.contains(value):
            raise ValueError(f"must be {self.allowed}")
        return value

    def flag_type(self):
        return self.kind.__name__


def define_number(name, default, help, allowed, flag_values=flags.FLAGS):
    """An integer flag (int default and an integer Range) or a float flag checked against `allowed`;
    a default of None means "unset" and is allowed."""
    kind = int if allowed.integer else float
    flags.DEFINE(_RangeParser(kind, allowed), name, default, f"{help} ({allowed}.)", flag_values,
                 serializer=flags.ArgumentSerializer(), module_name=_caller_module())


class _RangeListParser(flags.ArgumentParser):
    """absl parser of a comma-separated list of numbers, each inside a Range."""

    def __init__(self, allowed):
        self.element = _RangeParser(int if allowed.integer else float, allowed)
        self.allowed = allowed

    def parse(self, argument):
        items = argument if isinstance(argument, (list, tuple)) else str(argument).split(",")
        items = [item for item in items if str(item).strip()]
        if not items:
            raise ValueError(f"empty; must be a comma-separated list of {self.allowed}")
        try:
            return [self.element.parse(item) for item in items]
        except ValueError as err:
            raise ValueError(f"each value {err}") from None

    def flag_type(self):
        return "list"


def define_number_list(name, default, help, allowed, flag_values=flags.FLAGS):
    """A comma-separated list flag of numbers, each checked against `allowed`."""
    flags.DEFINE(_RangeListParser(allowed), name, default, f"{help} (each {allowed}.)", flag_values,
                 serializer=flags.CsvListSerializer(","), module_name=_caller_module())
