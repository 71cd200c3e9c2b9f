"""The error type for mistakes a user can make: reported as one sentence, never a traceback."""


class UserError(Exception):
    """A problem the user can fix (bad path, bad setting, bad file). Its message is one clear sentence."""
