"""A run's status, as the store keeps it and every printer colours it.

Its own module (core.events names it too) so that a history listing can read statuses without
importing the run's event and record types."""


class RunStatus:
    RUNNING = "running"
    SUCCESS = "success"
    PARTIAL = "partial"
    FAILED = "failed"
    CANCELLED = "cancelled"

    FINISHED = (SUCCESS, PARTIAL, FAILED, CANCELLED)
