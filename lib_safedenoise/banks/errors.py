"""The errors of bank files and folders: each carries a message meant for the user."""


class BankError(Exception):
    """Anything wrong with a bank, with a message meant for the user."""


class BankFormatError(BankError, ValueError):
    """The file is not a bank this version can read (bad header, keys, shapes or dtypes)."""


class BankIntegrityError(BankError):
    """The tensor bytes do not match ``modelspec.hash_sha256``: the file was altered or damaged."""


class BankCompatibilityError(BankError):
    """The bank was encoded in another latent space than the model's."""


class PickleRefusedError(BankError):
    """A legacy pickle bank was offered without explicit permission to unpickle it."""
