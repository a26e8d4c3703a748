"""Every error backspace raises on purpose, in one tree.

An error carries what a person needs: a `code` to act on, a `message` that says what to do and
whether retrying may help (`retryable`). When one ends a run, the runner turns it into the run's
one `error` event from those attributes alone (the message through `describe(stage)`): there is
no table in between. Anything else that escapes a run is a bug; the runner reports it as the base
itself, `internal_error`. Each code is raised by exactly one class; the README's "Error codes"
table lists them, with the class.

BackspaceError              internal_error: backspace failed unexpectedly
├── RunFailure              the pipeline's and the runner's own verdicts (clone_failed, ...)
├── SandboxError            sandbox_error: the sandbox failed (retryable)
│   ├── SandboxLost         sandbox_lost: deleted from outside the run, or its machine vanished
│   ├── SandboxUnavailable  sandbox_unavailable: this kind of sandbox cannot be used here
│   ├── SandboxUnreachable  sandbox_unreachable: Daytona could not create one, after retries
│   ├── SandboxQuota        sandbox_quota: Daytona refused one (quota or permissions)
│   └── SeccompUnavailable  sandbox_error: libseccomp cannot be loaded
├── ModelError              model_*: the model API failed, after its retries
├── GitHostError            github_*, push_rejected, ...: a git host operation failed
│   └── PolicyError         bad_bundle, junk_files, ...: the change breaks a publishing rule
├── GitError                git_failed: host git failed
├── RepoRefError            bad_repository: the repository reference is refused (a ValueError)
├── StoreError              store_unavailable: the run cannot be recorded (retryable)
│   ├── StoreFull           the disk is nearly full: new runs are refused
│   └── LeaseLost           this worker's claim on a run is gone: it stops and writes nothing
├── NotAccepting            the server is shutting down and takes no new runs
├── Refusal                 a run was not started; each front end words its `reason`
├── SettingsError           a setting is missing or invalid (at startup, never in a run)
└── EditorError             a mistake in an edit: goes back to the model, never ends a run

Not in the tree, because they never leave their module: `IncompleteStream` and `StalledStream`
(agent/model.py) are retry signals that end as a ModelError; `_Cancelled` (githosts/gitcmd.py)
says the caller left before git started.

Classes that raise one code set `code`; those that raise several list them in `codes` and take
the code when raised. The classes stay importable from where they are used (sandboxes/base.py,
agent/model.py, store.py, ...).
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum
from typing import ClassVar

from backspace.orchestrator.events import Stage


class BackspaceError(Exception):
    """The base: a code, a message a person can act on, and whether a retry may help."""

    code: str = "internal_error"
    retryable: bool = False
    codes: ClassVar[frozenset[str]] = frozenset()  # the codes a class raises besides `code`

    def __init__(self, message: str, *, code: str | None = None, retryable: bool | None = None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if retryable is not None:
            self.retryable = retryable

    def __str__(self) -> str:
        return self.message

    def describe(self, stage: Stage) -> str:
        """The `error` event's message when this error ends a run in `stage`."""
        return self.message


class RunFailure(BackspaceError):
    """The run cannot go on, in the pipeline's or the runner's own words."""

    codes = frozenset(
        {
            "bad_repo_file",
            "clone_failed",
            "cost_limit",
            "engine_failed",
            "engine_unavailable",
            "interrupted",
            "model_not_configured",
            "model_refusal",
            "secret_in_diff",
            "setup_failed",
            "setup_timed_out",
            "timeout",
            "tree_changed",
            "turn_limit",
            "wall_clock_limit",
        }
    )

    def __init__(self, code: str, message: str, *, retryable: bool = False) -> None:
        super().__init__(message, code=code, retryable=retryable)


# --- sandboxes ------------------------------------------------------------------------------------
class SandboxError(BackspaceError):
    """The sandbox failed (could not start, vanished, a file operation failed)."""

    code = "sandbox_error"
    retryable = True

    def describe(self, stage: Stage) -> str:
        # In the sandbox stage the only thing done with a sandbox is creating it.
        if stage is Stage.SANDBOX:
            return f"the sandbox could not be created: {self.message}"
        return f"the sandbox failed: {self.message}"


class SandboxLost(SandboxError):
    """The sandbox is gone: deleted from outside the run, or its machine vanished."""

    code = "sandbox_lost"


class SandboxUnavailable(SandboxError):
    """This kind of sandbox cannot be used on this server; the message says why and what to do."""

    code = "sandbox_unavailable"


class SandboxUnreachable(SandboxError):
    """Daytona kept failing to create a sandbox, through every attempt."""

    code = "sandbox_unreachable"


class SandboxQuota(SandboxError):
    """Daytona refused to create a sandbox: its quota, or the key's permissions."""

    code = "sandbox_quota"


class SeccompUnavailable(SandboxError):
    """libseccomp (Debian package libseccomp2) cannot be loaded, so no command may start."""


# --- the model ------------------------------------------------------------------------------------
class ModelError(BackspaceError):
    """The model API failed, after the retries a passing failure gets."""

    codes = frozenset(
        {
            "context_window",
            "model_auth",
            "model_bad_request",
            "model_error",
            "model_not_found",
            "model_overloaded",
            "model_permission",
            "model_rate_limited",
            "model_request_too_large",
            "model_stream_cut",
            "model_stream_error",
            "model_timeout",
            "model_unavailable",
            "model_unreachable",
        }
    )

    def __init__(self, code: str, message: str, retryable: bool = False, attempts: int = 1) -> None:
        super().__init__(message, code=code, retryable=retryable)
        self.attempts = attempts

    def describe(self, stage: Stage) -> str:
        return f"The model failed: {self.message}"


# --- git hosts and git ----------------------------------------------------------------------------
class GitHostError(BackspaceError):
    """A git host operation failed; `code` and `message` are what a person can act on."""

    codes = frozenset(
        {
            "branch_moved",
            "branch_not_found",
            "branch_protection",
            "commit_failed",
            "fork_not_ready",
            "github_app_bad_key",
            "github_app_clock",
            "github_app_not_installed",
            "github_app_permission",
            "github_bad_token",
            "github_error",
            "github_no_access",
            "github_no_token",
            "github_rate_limited",
            "github_rejected",
            "github_unavailable",
            "github_unreachable",
            "pr_not_found",
            "push_rejected",
            "repo_archived",
            "repo_not_found",
        }
    )

    def __init__(self, code: str, message: str, *, retryable: bool = False) -> None:
        super().__init__(message, code=code, retryable=retryable)


class PolicyError(GitHostError):
    """The change breaks a rule for what may be published; nothing was published."""

    codes = frozenset(
        {
            "bad_bundle",
            "change_too_large",
            "diff_too_large",
            "file_too_large",
            "junk_files",
            "protected_path",
            "symlink_outside_repository",
        }
    )


class GitError(BackspaceError):
    """Host git exited with an error; the message has its (redacted) stderr."""

    code = "git_failed"

    def __init__(self, args: Sequence[str], returncode: int, stderr: str) -> None:
        self.returncode = returncode
        self.stderr = stderr
        super().__init__(f"git {' '.join(args[:2])} failed ({returncode}): {stderr.strip()[:500]}")


class RepoRefError(BackspaceError, ValueError):
    """The repository reference is not acceptable; the message says why (a 422 for the API)."""

    code = "bad_repository"


# --- the store ------------------------------------------------------------------------------------
class StoreError(BackspaceError):
    """The store could not be written (disk full, file gone): the run cannot be recorded."""

    code = "store_unavailable"
    retryable = True

    def describe(self, stage: Stage) -> str:
        # The cause (a path, SQLite's words) is for the operator's log, not the run's viewers.
        return "backspace could not record this run (is its disk full?); an operator must look"


class StoreFull(StoreError):
    """The database's disk is nearly full: new runs are refused so running ones can finish."""


class LeaseLost(StoreError):
    """This worker's claim on a run is gone (its lease expired and another worker reaped it):
    it must stop the run at once and write nothing more. Never a run's error: the worker that
    reaped the run wrote its end (`interrupted`)."""


# --- never ends a run -----------------------------------------------------------------------------
class NotAccepting(BackspaceError):
    """The server is shutting down and takes no new runs."""


class SettingsError(BackspaceError):
    """A setting is missing or invalid; the message names the variable and the fix."""


class EditorError(BackspaceError):
    """A mistake in the tool call; its message goes back to the model as an error result."""


# --- admission -----------------------------------------------------------------------------------
class Kind(StrEnum):
    """What kind of no: the caller's input is wrong, or the server cannot take runs now."""

    INVALID = "invalid"
    NOT_FOUND = "not_found"
    UNAVAILABLE = "unavailable"


class Reason(StrEnum):
    """Why a run was refused; each front end words each reason its own way."""

    PROMPT = "prompt"  # too long, or control characters (field "prompt")
    REPOSITORY = (
        "repository"  # not a repository this server knows, or not allowed (field "repo_url")
    )
    GIT_HOST = "git_host"  # the repository's host cannot be used (GitHub without a token)
    MODEL = "model"  # no model configured
    SANDBOX = "sandbox"  # the sandbox backend cannot start sandboxes
    SHUTTING_DOWN = "shutting_down"  # the runner takes no new runs
    STORE_FULL = "store_full"  # the database's disk is below its headroom
    STORE_FAILING = "store_failing"  # the run could not be recorded
    MODE = "mode"  # a follow-up's mode is neither queue nor steer (field "mode")
    UNKNOWN_RUN = "unknown_run"  # a follow-up names a run this server does not have

    @property
    def kind(self) -> Kind:
        if self is Reason.UNKNOWN_RUN:
            return Kind.NOT_FOUND
        if self in (Reason.PROMPT, Reason.REPOSITORY, Reason.MODE):
            return Kind.INVALID
        return Kind.UNAVAILABLE


class Refusal(BackspaceError):
    """A run was not started. Nothing was recorded or queued.

    `message` says why in plain words (the host's or the sandbox's own message, the prompt's
    fault); `field` names the input it concerns, `subject` the thing that cannot be used (a
    repository's name, a sandbox backend); `retry_after` is seconds worth waiting, when known.
    """

    def __init__(
        self,
        reason: Reason,
        message: str,
        *,
        field: str | None = None,
        subject: str | None = None,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.field = field
        self.subject = subject
        self.retry_after = retry_after

    @property
    def kind(self) -> Kind:
        return self.reason.kind
