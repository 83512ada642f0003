"""The exceptions users see: each names the problem and what to do next."""

EXIT_PREEMPTED = 75  # EX_TEMPFAIL (sysexits.h): stopped on request, checkpoint saved, resume later


class SelfSupError(Exception):
    """A problem with the user's input (data, config, run folder) that the user can fix.

    The CLI prints its message alone, without a traceback; the Python API raises it as is.
    """


class Preempted(Exception):
    """Training stopped on SIGTERM/SIGINT after saving a checkpoint at a step boundary.

    Not an error: the run can be continued exactly with ``selfsup pretrain --resume RUN``. The
    CLI exits with :data:`EXIT_PREEMPTED` (75, ``EX_TEMPFAIL``) so job schedulers can requeue it.
    """

    def __init__(self, message: str, checkpoint: str | None = None, step: int = 0):
        super().__init__(message)
        self.checkpoint = checkpoint
        self.step = step
