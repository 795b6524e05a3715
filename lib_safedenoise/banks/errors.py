"""The errors of bank files and folders: each carries a message meant for the user."""


class BankError(Exception):
    """Anything wrong with a bank, with a message meant for the user."""


class BankFormatError(BankError, ValueError):
    """The file is not a bank this version can read (bad header, keys, shapes, dtypes or metadata limits)."""


class BankValuesError(BankFormatError):
    """The bank's latents (or weights) hold NaN or infinite values: no such bank enters a folder or a
    generation."""


class BankIntegrityError(BankError):
    """The tensor bytes do not match ``modelspec.hash_sha256``: the file was altered or damaged."""


class BankCompatibilityError(BankError):
    """The bank was encoded in another latent space than the model's."""


class BankNameError(BankError, ValueError):
    """A bank or file name that cannot be used: empty, a folder reference, reserved on Windows, or too
    long for file systems. Bad input (HTTP 400), never a server fault."""


class BankExistsError(BankError):
    """The target bank file exists and replacing it was not asked for."""


class PickleRefusedError(BankError):
    """A legacy pickle bank was offered without explicit permission to unpickle it."""
