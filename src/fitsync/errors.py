"""Error types and the documented exit codes.

Every error a user can cause or meet is a ``FitsyncError``: the CLI prints its
message on one line (no traceback) and exits with its ``exit_code``.
"""

EXIT_OK = 0
EXIT_DIFFERENCES = 1  # differences, corruption or missing files found
EXIT_USAGE = 2  # bad command line or bad input (manifest, path, config)
EXIT_FAILED = 3  # some files failed after retries
EXIT_CONNECTION = 4  # connection or authentication failure
EXIT_LOCKED = 5  # another fitsync holds the destination lock


class FitsyncError(Exception):
    """Base of all user-facing errors; the message is one line."""

    exit_code = EXIT_USAGE
    # Worth retrying: the same attempt may succeed later (network, a source
    # being modified). A file that contradicts a signed manifest is not.
    transient = False


class UsageError(FitsyncError):
    exit_code = EXIT_USAGE


class BadInput(FitsyncError):
    """Malformed manifest, signature, index, config or path."""

    exit_code = EXIT_USAGE


class UnsafePath(BadInput):
    """A path from a listing, manifest or index that would escape its root."""


class NotFound(BadInput):
    """A named file, directory or remote object does not exist."""


class TransferFailed(FitsyncError):
    exit_code = EXIT_FAILED
    transient = True


class VerificationFailed(TransferFailed):
    """Written bytes do not hash to the expected digest."""


class SourceChanged(TransferFailed):
    """The source file changed while it was being read."""


class ConnectionFailed(FitsyncError):
    exit_code = EXIT_CONNECTION
    transient = True


class AuthenticationFailed(ConnectionFailed):
    # Retrying a wrong password can lock an account or a shared link.
    transient = False


class HostNotFound(ConnectionFailed):
    """A host name that does not resolve: asking again will not help."""

    transient = False


class HostKeyRejected(ConnectionFailed):
    transient = False


class Locked(FitsyncError):
    exit_code = EXIT_LOCKED
