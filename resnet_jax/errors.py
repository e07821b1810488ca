"""The one base class of the errors that report a user's mistake.

Every error that names a bad input (a wrong architecture, a damaged file, an unknown
layer name, a NaN loss) derives from ``ResNetJaxError``; the CLI prints such an error as
one line and exits with status 2 instead of showing a traceback.
"""


class ResNetJaxError(ValueError):
    """Bad input: the message says what is wrong and what would be right."""
