"""The one exception type for bad user input: the CLI turns it into a short message and exit code 2."""


class InputError(Exception):
    """A problem in what the user gave (spec, data, address, URI); the message says how to mend it."""
