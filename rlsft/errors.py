"""One exception type for bad input, so the entrypoint can print one clear line and exit non-zero."""


class RlsftError(Exception):
    """A problem with the user's input (config, data file, model id): shown as one line, no traceback."""
