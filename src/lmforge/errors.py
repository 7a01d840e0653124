"""The one exception type for user mistakes: the CLI prints it as a single line and exits with code 2."""


class LmforgeError(Exception):
    """A problem with the user's input (file, config, checkpoint, prompt) that says what is wrong and how to fix it."""
