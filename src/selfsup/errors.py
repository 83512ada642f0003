"""The one exception type users see: it names the problem and the fix."""


class SelfSupError(Exception):
    """A problem with the user's input (data, config, run folder) that the user can fix.

    The CLI prints its message alone, without a traceback; the Python API raises it as is.
    """
