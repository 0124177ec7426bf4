"""One exception type for every mistake a user can make.

The CLIs catch `PSLError` and print its message alone, so a bad flag, a missing dataset or a wrong
checkpoint ends in one sentence that names the problem and the fix instead of a TensorFlow traceback.
"""


class PSLError(Exception):
    """A problem with the user's input or environment, with a message that says how to fix it."""
